"""The kernel side of kr: what a session does on Kaggle (or in the local sandbox) around the trainer.

``templates/kernel.py.j2`` renders a short bootstrap: the session's settings as data, an archive of
``trainer``, ``kr_contract`` and this package with its sha256, and a call of ``main(settings)``. Everything
else happens here, with the standard library only (nothing is installed when it starts):

1. find the mounted checkpoint dataset whose ``kr-marker.json`` names the checkpoint this session expects, and
   restore it into ``./checkpoints`` (``inputs``);
2. install what the image lacks when internet is on, count the GPUs, build the trainer's command
   (``trainer_process``);
3. run the trainer under the progress watchdog, which stops a trainer that makes no progress for
   ``stall_timeout_s`` (``watchdog``);
4. write ``run.json`` and exit with the contract's exit code (``session``).
"""

from __future__ import annotations

from typing import Any


def main(settings: dict[str, Any]) -> int:
    """Run one session; returns the process exit code (kr_contract.names EXIT_*)."""
    from kr_kernel.session import run_session
    from kr_kernel.settings import KernelSettings

    return run_session(KernelSettings.from_mapping(settings))
