"""``python -m kaggle_runner.cli``: the same as ``kr``."""

from kaggle_runner.cli import main

main()
