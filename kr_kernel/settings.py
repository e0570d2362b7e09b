"""The settings a rendered kernel carries (kaggle_runner.render writes them; the bootstrap adds where it
unpacked the archive and when the script started)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# The watchdog's timeout when none is rendered (docs/architecture.md: why 15 minutes).
DEFAULT_STALL_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class KernelSettings:
    kr_version: str
    chain: str
    session: int
    budget_s: float
    deadline_margin_s: float
    epochs: int
    trainer_args: tuple[str, ...]
    trainer_sha256: str
    source_dir: str  # where the bootstrap unpacked trainer, kr_contract and kr_kernel
    scratch_dir: str  # the bootstrap's private scratch folder (removed when the script ends)
    started: float  # time.time() when the script started: the session budget counts from here
    expect: dict[str, Any] | None = None  # {chain, session, sha256} of the checkpoint to resume; None: fresh
    dataset_sources: tuple[str, ...] = ()
    internet: bool = False
    requirements: dict[str, str] = dataclasses.field(default_factory=dict)  # module -> pip requirement
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> KernelSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"kernel settings have no field {unknown[0]!r}: re-render the kernel with this kr")
        values = dict(data)
        for key in ("trainer_args", "dataset_sources"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)
