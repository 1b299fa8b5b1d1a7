"""Several processes through ``torch.distributed``: what :func:`cnflow.training.fit` and
``cnflow fit`` need to run under ``torchrun`` (one process per rank).

Every rank holds the whole (small) table and draws the same global batches; each takes its
own contiguous share of every batch (:func:`shard`), DistributedDataParallel averages the
gradients, and the validation NLL is reduced over the ranks. So a run on ``N`` processes
takes the same optimisation steps as a run on one process with the same batch size, up to
solver tolerance (each rank's adaptive solve chooses its own steps) and the random draws of
the objective (each rank has its own stream).

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment, or 1) every function here is a
no-op answering for a single process, so the library never needs a process group.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_gather", "any_rank", "broadcast", "is_main", "rank", "setup", "shard",
           "teardown", "world_size"]


def world_size() -> int:
    """Number of processes in the job (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    """Whether this process writes files, logs and the progress bar (rank 0)."""
    return rank() == 0


def setup(timeout_minutes: float = 30.0) -> torch.device | None:
    """Join the process group that ``torchrun`` describes in the environment.

    The backend is ``nccl`` where CUDA is available (each rank on GPU ``LOCAL_RANK``) and
    ``gloo`` otherwise. Without ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing happens.

    Returns:
        The device of this rank (``cuda:LOCAL_RANK`` or ``cpu``), or None for a single
        process.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu")
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return device


def teardown(synchronize: bool = False) -> None:
    """Leave the process group (if any).

    Args:
        synchronize: wait for every rank first (after a run that succeeded on all of them):
            a rank that destroys the group while another still talks to it can abort that
            one. After a failure the others may never arrive, so none is waited for.
    """
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def shard(n: int) -> slice:
    """This rank's contiguous share of ``n`` rows (the first ``n mod N`` ranks get one more,
    as ``numpy.array_split``)."""
    size, extra = divmod(n, world_size())
    r = rank()
    start = r * size + min(r, extra)
    return slice(start, start + size + (r < extra))


def _device() -> torch.device:
    # nccl reduces CUDA tensors only; gloo reduces CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (a collective: every rank must call it)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([float(flag)], device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a collective)."""
    if world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a collective)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
