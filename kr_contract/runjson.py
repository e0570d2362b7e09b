"""``run.json`` (the kernel's summary of a session) and ``trainer_result.json`` (the trainer's of its run).

run.json, written atomically by the kernel at every exit it controls::

    {"kr_version", "chain", "session", "trainer_sha256", "args": [...], "exit_code", "stop_reason",
     "message", "resumed_from": {chain, session, sha256} | null, "started", "ended" (ISO-8601 UTC),
     "seconds", "gpus", "result": <trainer_result.json> | null,
     "stall": {"phase", "step", "epoch", "silent_s", "where"} | null}

``stop_reason`` is the trainer's (names.CLEAN_STOPS, ``diverged``) or the kernel's own (``stale_input``,
``bad_input``, ``bad_script``, ``stalled``, ``crash``, ``unknown``). ``stall`` is set when the watchdog
stopped the trainer: the phase and step of the last heartbeat, how long it had been silent, and where the
main thread of rank 0 was stuck.

trainer_result.json, written atomically by the trainer (rank 0) at every exit it controls::

    {"stop_reason", "epoch", "step", "batch_in_epoch", "epochs_done", "steps_done", "best": {...} | null,
     "last_val": {...} | null, "train_loss", "seconds", "model_size", "data_name", "message"?}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kr_contract.atomic import atomic_write_json, read_json, read_json_object
from kr_contract.errors import ContractError
from kr_contract.names import RUN_JSON, TRAINER_RESULT

RUN_FIELDS = ("kr_version", "chain", "session", "trainer_sha256", "args", "exit_code", "stop_reason", "message",
              "resumed_from", "started", "ended", "seconds", "gpus", "result", "stall")
STALL_FIELDS = ("phase", "step", "epoch", "silent_s", "where")


def write_run_json(folder: str | os.PathLike[str], run: dict[str, Any]) -> Path:
    unknown = sorted(set(run) - set(RUN_FIELDS))
    if unknown:
        raise ValueError(f"run.json has no field {unknown[0]!r}: the contract's fields are {RUN_FIELDS}")
    path = Path(folder) / RUN_JSON
    atomic_write_json(path, {name: run.get(name) for name in RUN_FIELDS})
    return path


def read_run_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed run.json; ContractError when it does not parse or is not an object."""
    try:
        run = read_json(path)
    except (OSError, ValueError) as exc:
        raise ContractError(f"{RUN_JSON} does not parse ({type(exc).__name__}: {exc})") from None
    if not isinstance(run, dict):
        raise ContractError(f"{RUN_JSON} is not a JSON object")
    return run


def write_trainer_result(folder: str | os.PathLike[str], result: dict[str, Any]) -> Path:
    path = Path(folder) / TRAINER_RESULT
    atomic_write_json(path, result)
    return path


def read_trainer_result(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The trainer's result in ``folder``; None when it wrote none (or it is damaged)."""
    return read_json_object(Path(folder) / TRAINER_RESULT)
