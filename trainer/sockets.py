"""Multiprocessing with any TMPDIR: a short private temp folder when TMPDIR is too deep for a socket path.

A DataLoader worker hands each batch's tensors to the main process through file descriptors, which
multiprocessing's resource sharer passes over an AF_UNIX socket at ``<tempdir>/pymp-XXXXXXXX/listener-XXXXXXXX``.
Linux allows 107 bytes for that path (macOS 103); beyond it the worker's ``OSError: AF_UNIX path too long``
happens in a background thread, the batch never arrives, and without a timeout the main process waits
forever. So when the path would be too long, this process's temp folder (``tempfile.tempdir``, which
multiprocessing and forked workers use) becomes a short private folder, removed at exit. ``TMPDIR`` itself is
left alone: the files the DDP ranks share live under it (trainer/exchange.py).
"""

from __future__ import annotations

import atexit
import multiprocessing.process
import os
import shutil
import sys
import tempfile
from pathlib import Path

# sun_path holds 108 bytes on Linux, 104 on macOS, with the terminating NUL.
AF_UNIX_PATH_MAX = 103 if sys.platform == "darwin" else 107
# What multiprocessing adds to the temp folder: "/pymp-" + 8 characters, "/listener-" + 8 characters.
LISTENER_SUFFIX = len("/pymp-") + 8 + len("/listener-") + 8
SHORT_CANDIDATES = ("/tmp", "/var/tmp", "/dev/shm")

_original: str | None = None  # the temp folder before the first switch
_short: str | None = None  # the short folder this process made


def socket_path_fits(folder: str) -> bool:
    return len(os.fsencode(folder)) + LISTENER_SUFFIX <= AF_UNIX_PATH_MAX


def original_tempdir() -> str:
    """The temp folder before any switch: the same for every rank of a job."""
    return _original if _original is not None else tempfile.gettempdir()


def ensure_short_tempdir() -> str | None:
    """Switch this process's temp folder to a short private one when sockets under the current one would not
    fit; returns a one-line note for the log the first time it switched (None otherwise). The current folder is
    checked each time: code that resets ``tempfile.tempdir`` must not bring the deep folder back unnoticed."""
    global _original, _short
    current = tempfile.gettempdir()
    if socket_path_fits(current):
        return None
    first = _short is None or not os.path.isdir(_short)
    if first:
        _short = _make_short_folder()
        if _short is None:
            return (f"TMPDIR {current} is too deep for multiprocessing's sockets ({len(os.fsencode(current))} + "
                    f"{LISTENER_SUFFIX} > {AF_UNIX_PATH_MAX} bytes) and no short writable folder exists: DataLoader "
                    "workers may fail (the loader's timeout then ends the run); use a shorter TMPDIR")
        atexit.register(_remove, _short, os.getpid())
    if _original is None:
        _original = current
    tempfile.tempdir = _short
    # multiprocessing keeps the folder it made for its sockets (its own finalizer removes it at exit): forget
    # it, so that the next socket goes under the short folder.
    multiprocessing.process.current_process()._config.pop("tempdir", None)  # type: ignore[attr-defined]
    if not first:
        return None
    return (f"TMPDIR {current} is too deep for multiprocessing's sockets ({len(os.fsencode(current))} + "
            f"{LISTENER_SUFFIX} > {AF_UNIX_PATH_MAX} bytes): using {_short} for them instead (removed at exit)")


def _make_short_folder() -> str | None:
    for base in SHORT_CANDIDATES:
        if not (os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK)):
            continue
        try:
            folder = tempfile.mkdtemp(prefix="kr-", dir=base)
        except OSError:
            continue
        if socket_path_fits(folder):
            return folder
        shutil.rmtree(folder, ignore_errors=True)
    return None


def _remove(folder: str, owner: int) -> None:
    if os.getpid() == owner:  # not in a forked child that inherited the handler
        shutil.rmtree(Path(folder), ignore_errors=True)
