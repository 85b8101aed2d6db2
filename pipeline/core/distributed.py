"""Multi-process runs under ``torchrun``: PyTorch's process group, DDP, and sharding by rank.

``torchrun --nproc_per_node=N -m pipeline.cli train|cv|compare|infer ...`` starts N copies of the
command; each finds its rank in the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and :func:`setup` joins the process group: NCCL
when the run is on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on CPUs. Without torchrun
every function here is a no-op for a single process (rank 0 of 1), so the same code runs both ways.

What each command does with the ranks:

* **train / cv / compare**: the network is wrapped in ``DistributedDataParallel``; each rank
  trains on its own part of the fold's training cases (``monai.data.partition_dataset``, padded so
  every rank takes the same number of steps); validation cases are split by rank and the Dice is
  gathered across ranks; only rank 0 writes checkpoints, logs, predictions' bookkeeping and reports.
* **infer**: the cases are dealt out by rank (case ``i`` to rank ``i % N``); each case (its mask
  and its record) is written by exactly one rank; rank 0 merges the records into ``timings.csv``
  and ``inputs.csv``.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from pipeline.core.errors import ConfigError
from pipeline.core.runtime import select_device

__all__ = [
    "launched",
    "setup",
    "join",
    "shutdown",
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "shard",
    "partition_for_training",
    "shard_for_validation",
    "all_gather_objects",
    "mean_across_ranks",
    "any_across_ranks",
    "wrap_ddp",
    "describe_failure",
]

log = logging.getLogger("pancreas_seg")
T = TypeVar("T")
# How long a rank waits for the others at a collective before giving up. torchrun ends the
# whole job when one process dies, so this only matters for a rank that hangs.
TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("PANCREAS_SEG_DIST_TIMEOUT_MIN", "30")))


def launched() -> bool:
    """True when this process was started by torchrun with more than one process in the job."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def is_distributed() -> bool:
    """True once :func:`setup` joined a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes in the job (1 without torchrun)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the process that writes shared files (rank 0)."""
    return rank() == 0


def setup(device: torch.device) -> None:
    """Join torchrun's process group (a no-op without torchrun or when already joined).

    Args:
        device: where this run computes (from ``pipeline.core.runtime.select_device``): CUDA uses NCCL
            and pins this process to ``cuda:LOCAL_RANK``; the CPU uses gloo.

    Raises:
        ConfigError: more processes per node than GPUs, or a process group cannot be formed.
    """
    if not launched() or is_distributed():
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun: LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) on this node; "
                "use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        backend = "gloo"
    try:
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"torchrun: cannot join the process group ({' '.join(str(exc).split())[:200]})"
        ) from None
    # torchrun stops the other processes with SIGTERM when one fails: raise so that cleanup runs
    # (temporary files removed) instead of dying mid-write.
    signal.signal(signal.SIGTERM, _terminate)
    if not is_main():
        # One voice: ranks > 0 log warnings and errors only.
        logging.getLogger("pancreas_seg").setLevel(logging.WARNING)
    log.info("torchrun: %d processes, backend %s", world_size(), backend)


def join(perf: Any) -> None:
    """:func:`setup` on the device ``perf`` (a ``PerfConfig``) selects; a no-op without torchrun."""
    if launched():
        setup(select_device(perf))


def _terminate(signum: int, frame: Any) -> None:
    print(
        f"pancreas-seg: rank {os.environ.get('RANK', '?')}: stopped by torchrun (another process of the "
        "job failed or the job was cancelled); checkpoints written so far are complete",
        file=sys.stderr,
    )
    raise SystemExit(128 + signum)


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (no-op for one process)."""
    if is_distributed():
        dist.barrier()


def shard(items: Sequence[T]) -> list[T]:
    """This rank's items: ``items[rank::world_size]`` (every item goes to exactly one rank)."""
    return list(items[rank() :: world_size()])


def partition_for_training(records: Sequence[dict], seed: int) -> list[dict]:
    """This rank's training cases: a seeded shuffle split into equal parts (padded by repeating
    cases when the count does not divide), so every rank takes the same number of steps."""
    if not is_distributed():
        return list(records)
    from monai.data import partition_dataset

    parts = partition_dataset(
        data=list(records), num_partitions=world_size(), shuffle=True, seed=seed, even_divisible=True
    )
    return list(parts[rank()])


def shard_for_validation(records: Sequence[dict]) -> list[dict]:
    """This rank's validation cases; every rank validates all of them when there are fewer cases
    than ranks (each case then counts once per rank, which leaves the mean unchanged)."""
    if not is_distributed() or len(records) < world_size():
        return list(records)
    return shard(records)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` for one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_across_ranks(total: float, count: int) -> float:
    """The mean of values summed per rank: ``sum(total) / sum(count)`` over all ranks."""
    if is_distributed():
        t = torch.tensor([float(total), float(count)], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / count if count else float("nan")


def any_across_ranks(flag: bool) -> bool:
    """True when ``flag`` is true on any rank."""
    return any(all_gather_objects(bool(flag)))


def wrap_ddp(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(net)`` in a multi-process run, else ``net`` unchanged.

    Buffers (batch-norm running statistics) are broadcast from rank 0 at every forward, so the
    checkpoint rank 0 writes holds one consistent set. Batch norm itself normalises each rank's
    batch on its own (no ``SyncBatchNorm``), as nnU-Net does.
    """
    if not is_distributed():
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else None
    )
    return DistributedDataParallel(net, device_ids=ids)


def describe_failure(exc: BaseException) -> str | None:
    """A user-facing line for an error that comes from another rank failing, else None."""
    if not launched():
        return None
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    if name in {"DistBackendError", "DistNetworkError"} or (
        isinstance(exc, RuntimeError)
        and any(k in text.lower() for k in ("gloo", "nccl", "connection", "peer"))
    ):
        return f"rank {os.environ.get('RANK', '?')}: another process of the torchrun job failed or was stopped ({text[:160]})"
    return None
