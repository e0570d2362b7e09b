"""Data-parallel training through ``torchrun``: process group set-up and the few collectives the loop needs.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with a world size of 1 (or no torchrun) nothing here
touches ``torch.distributed`` and the trainer runs as a single process. The backend is nccl on CUDA (one
GPU per process, ``cuda:LOCAL_RANK``) and gloo on CPU (tests).

Every decision that changes which collectives run next (stop, periodic save, the outcome of validation) is
agreed across ranks here, so that no rank waits forever in a collective the others skipped.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from kr_contract.names import STOP_COMPLETED, STOP_DEADLINE, STOP_MAX_STEPS, STOP_SIGNAL, STOP_TIME_BUDGET
from trainer import watch
from trainer.runtime import Runtime, RuntimeSetupError, detect_runtime

# Stop reasons in order of precedence: when ranks disagree, the highest one wins.
STOP_REASONS = (None, STOP_MAX_STEPS, STOP_COMPLETED, STOP_TIME_BUDGET, STOP_DEADLINE, STOP_SIGNAL)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_runtime(device_flag: str = "auto") -> Runtime:
    """The runtime of this process; joins the process group when torchrun started several."""
    world_size = env_world_size()
    if world_size <= 1:
        return detect_runtime(device_flag)
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_flag == "cuda" or (device_flag == "auto" and torch.cuda.is_available())
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeSetupError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible: "
                "start torchrun with --nproc_per_node at most the GPU count"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        # A rank that stops answering ends the run before the watchdog would have to (trainer/watch.py).
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=watch.collective_timeout_s()),
                                device_id=device if use_cuda else None)
    return Runtime(device=device, rank=rank, world_size=world_size, local_rank=local_rank)




def shutdown(clean: bool = True) -> None:
    """Leaves the process group. After a clean run every rank waits for the others first, so that none tears
    the group down while another is still finishing its last collective (gloo aborts then). After a failure it
    does not wait: the other ranks may never get there, and torchrun stops them once this one exits."""
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def active(runtime: Runtime) -> bool:
    return runtime.world_size > 1 and dist.is_initialized()


def agree_stop(runtime: Runtime, reason: str | None, save_due: bool) -> tuple[str | None, bool]:
    """The stop reason and periodic-save decision every rank acts on (the strongest of all ranks')."""
    if not active(runtime):
        return reason, save_due
    flags = torch.tensor([STOP_REASONS.index(reason), int(save_due)], dtype=torch.int64,
                         device=_collective_device(runtime))
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return STOP_REASONS[int(flags[0])], bool(flags[1])


def broadcast_from_main(runtime: Runtime, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not active(runtime):
        return value
    box = [value if runtime.is_main_process else None]
    dist.broadcast_object_list(box, src=0, device=_collective_device(runtime))
    return box[0]


def broadcast_buffers_from_main(runtime: Runtime, model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, in place."""
    if not active(runtime):
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def gather_to_main(runtime: Runtime, value: Any) -> list[Any]:
    """Every rank's ``value`` in rank order on every rank (a picklable object)."""
    if not active(runtime):
        return [value]
    values: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(values, value)
    return values


def barrier(runtime: Runtime) -> None:
    if active(runtime):
        dist.barrier()


def _collective_device(runtime: Runtime) -> torch.device:
    return runtime.device if runtime.is_cuda else torch.device("cpu")
