"""``python -m trainer``: parse the command line (no torch yet), then train. Exit codes in docs/architecture.md §2."""

from __future__ import annotations

import sys
import time

# The time budget counts from process start, before torch is imported and data is loaded.
PROCESS_START = time.time()


def main(argv: list[str] | None = None) -> int:
    from trainer import watch  # stdlib and kr_contract only

    watch.start()  # pid file, stack dumps and the first heartbeat, before the seconds torch takes to import
    from trainer.config import parse_args

    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    from trainer.train import run

    return run(cfg, PROCESS_START)


if __name__ == "__main__":
    sys.exit(main())
