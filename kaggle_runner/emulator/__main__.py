"""``python -m kaggle_runner.emulator --port N --root DIR``: serve the Kaggle emulator until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from kaggle_runner.emulator import Emulator, Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaggle_runner.emulator", description=__doc__)
    parser.add_argument("--port", type=int, default=7777)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--root", type=Path, required=True, help="where kernels, datasets and blobs live")
    parser.add_argument("--time-scale", type=float, default=0.001, help="real seconds per Kaggle second")
    parser.add_argument("--user", default="testuser:fakekey", help="the account, as username:key")
    args = parser.parse_args(argv)
    username, _, key = args.user.partition(":")
    if not username or not key:
        print("error: --user must be username:key", file=sys.stderr)
        return 2
    settings = Settings(accounts={username: key}, time_scale=args.time_scale)
    try:
        emulator = Emulator(args.root, settings).start(args.host, args.port)
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error.strerror}", file=sys.stderr)
        return 2
    print(f"Kaggle emulator on {emulator.url} (root {args.root}); clients need:")
    print(
        f"  KAGGLE_API_ENVIRONMENT=LOCALHOST HTTP_PROXY={emulator.url} NO_PROXY= and kaggle.json {username}"
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
