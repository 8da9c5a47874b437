"""Speed figures, each measured against its limit in the same run (``./dev bench``).
Not tests: nothing here asserts a speed."""
