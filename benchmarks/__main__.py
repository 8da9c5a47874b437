"""``python -m benchmarks`` (``./dev bench``): see benchmarks/bench.py."""

from benchmarks.bench import main

main()
