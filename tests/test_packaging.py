"""The wheel carries the bot and nothing else: the test harness and the demo stay in tests/."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_the_bot_and_no_test_harness(tmp_path: Path) -> None:
    # Built from a copy, so that the build leaves no build/ or egg-info in the checkout; the
    # copy keeps tests/ beside bot/ so that a package list reaching into it would show here.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "node_modules", "data")
    shutil.copytree(ROOT / "bot", src / "bot", ignore=skip)
    shutil.copytree(ROOT / "tests", src / "tests", ignore=skip)
    out = tmp_path / "wheel"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--quiet", "-w", str(out)],
        capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = out.glob("newsbot-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    files = [name for name in names if not name.startswith("newsbot-")]
    assert [name for name in files if not name.startswith("bot/")] == []
    assert [name for name in files if "testing" in name or "demo" in name] == []
    shipped = {path.relative_to(ROOT).as_posix() for path in (ROOT / "bot").rglob("*.py")}
    assert shipped <= set(files)
