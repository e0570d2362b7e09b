"""Where the trainer runs: device and process rank, decided in one place.

Only the main process logs and saves (``is_main_process``). The sampler takes ``rank``/``world_size`` from here,
so multi-process training (torchrun's RANK/WORLD_SIZE/LOCAL_RANK) plugs in without touching the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class RuntimeSetupError(Exception):
    """The requested device or process layout is not available; one line that says what to do."""


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def detect_runtime(device_flag: str = "auto") -> Runtime:
    """The runtime of a single-process run; ``trainer.distributed.init_runtime`` handles torchrun's several."""
    if device_flag == "cuda" and not torch.cuda.is_available():
        raise RuntimeSetupError("--device cuda but no CUDA device is visible: use --device cpu or auto")
    use_cuda = device_flag == "cuda" or (device_flag == "auto" and torch.cuda.is_available())
    return Runtime(device=torch.device("cuda", 0) if use_cuda else torch.device("cpu"))
