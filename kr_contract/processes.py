"""Whether a process still runs, the way every side needs to know it.

The local backend asks it of a sandbox's supervisor and the trainer of rank 0 while it prepares the data; both
must count a zombie (dead, not yet reaped by its parent) as ended, since its state will never change again.
"""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal check is all there is
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
