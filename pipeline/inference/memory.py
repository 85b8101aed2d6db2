"""How much host memory one scan may take (``infer.max_memory_gb``) and how much it would take.

:func:`memory_budget` is the key's value, or with 0 (the default) 75% of what this process could
have: ``MemAvailable`` of ``/proc/meminfo``, or the room left under the process's cgroup memory limit
where that is lower (containers, batch schedulers), plus what the process holds already (its own
resident memory is part of the peak being estimated). The 25% left over covers the page cache the
scan is read through, the allocator's slack and other processes' growth.

:func:`estimate_peak` predicts a scan's peak resident memory from its header (shape, voxel type,
spacing), before a voxel is read: the process as it stands (Python, torch, the networks; measured,
not guessed) plus the largest of three stages, which run one after the other and reuse what the one
before freed:

* reading: the stored voxels plus their float32 copy;
* the network: what reading held (freed, but not reused by the windows' allocations: measured),
  the canonical image (the scan resampled to ``data.target_spacing``), the sliding window's output
  and weight buffers, and on the CPU the activations of ``infer.sw_batch_size`` windows
  (:data:`ACTIVATION_BYTES` per window voxel and first-level channel; on CUDA they live in GPU
  memory);
* inverting: the float32 map and the uint8 mask on the input grid (plus float32 probabilities with
  ``infer.save_probabilities``).

The float32 scan kept for ``statistics.csv`` adds 4 bytes per input voxel to inverting.
The constants were calibrated with ``bench/long_scan.py --profile`` (numbers in NOTES-zsplit.md):
the estimate is meant to be a little above the measured peak, never far below it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ACTIVATION_BYTES",
    "GIB",
    "MemoryModel",
    "available_bytes",
    "estimate_peak",
    "memory_budget",
    "resident_bytes",
]

GIB = 2**30
# Activation bytes per window voxel per first-level channel, CPU inference with folded batch norms.
# Calibrated on the paper's network (16 channels first) with two 160x160x96 windows: 1.9 GB.
ACTIVATION_BYTES = 24.0
# Allocator slack and fragmentation on top of the arrays the stages hold (glibc keeps freed memory).
SLACK = 1.1


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def resident_bytes() -> int:
    """This process's resident memory now (0 where /proc is not available)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, then v1), None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:  # v1 writes ~2^63 for "none"
            return max(limit - usage, 0)
    return None


def available_bytes() -> int | None:
    """What this process could still allocate: MemAvailable, or less where a cgroup limit says so;
    None where neither is known (not Linux)."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    room = [v for v in (avail, _cgroup_room()) if v is not None]
    return min(room) if room else None


def memory_budget(max_memory_gb: float) -> tuple[int | None, str]:
    """The bytes one scan may take, and where that number comes from (for messages).

    Args:
        max_memory_gb: ``infer.max_memory_gb``; 0 chooses 75% of (available + this process's own).

    Returns:
        (bytes or None when nothing is known about the machine's memory, a description).
    """
    if max_memory_gb > 0:
        return int(max_memory_gb * GIB), f"infer.max_memory_gb={max_memory_gb:g}"
    avail = available_bytes()
    if avail is None:
        return None, "no memory limit known"
    total = avail + resident_bytes()
    return int(0.75 * total), f"infer.max_memory_gb=0: 75% of the available {total / GIB:.1f} GB"


@dataclass
class MemoryModel:
    """What the estimate depends on besides the scan: the process, the network and the outputs.

    Attributes:
        process_bytes: resident memory before the scan (Python, torch, the networks).
        window_voxels: voxels of one sliding window.
        sw_batch_size: windows per network call.
        first_channels: the network's first-level channels.
        on_cpu: the network runs on the CPU (its activations are host memory).
        channels: the sliding window's output channels (classes, plus one per fold for QC).
        statistics: the float32 scan is kept for ``statistics.csv`` until the mask is measured.
        probability_channels: float32 probability maps written on the input grid (0: none).
        target_spacing: the canonical grid's spacing in mm.
    """

    process_bytes: int
    window_voxels: int
    sw_batch_size: int
    first_channels: int
    on_cpu: bool
    channels: int
    statistics: bool
    probability_channels: int
    target_spacing: Sequence[float]

    def activations(self) -> float:
        """Bytes of the network's activations for one call (host memory only on the CPU)."""
        act = ACTIVATION_BYTES * self.window_voxels * self.sw_batch_size * self.first_channels
        return act if self.on_cpu else 0.0

    def canonical_ratio(self, spacing: Sequence[float]) -> float:
        """Canonical voxels per input voxel: the volume of a target voxel over an input one."""
        return math.prod(float(s) for s in spacing) / math.prod(float(s) for s in self.target_spacing)

    def stages(self, voxels: float, itemsize: int, spacing: Sequence[float] | None) -> dict[str, float]:
        """Bytes above the process that each stage holds at its peak, for ``voxels`` input voxels."""
        n = float(voxels)
        nc = n * (self.canonical_ratio(spacing) if spacing is not None else 1.0)
        kept = 4.0 * n if self.statistics else 0.0  # the float32 scan, for statistics.csv
        reading = (itemsize + 4.0) * n  # the stored voxels and their float32 copy
        return {
            "reading": reading,
            # the canonical image, the window's outputs and weights, the activations; what reading
            # freed is not reused by them (measured: 512x512x1000 without statistics, 3.43 GB)
            "network": reading + 4.0 * (self.channels + 2) * nc + self.activations(),
            # the canonical probabilities, the float32 map and uint8 mask (and probabilities) on the input grid
            "inverting": kept + 4.0 * self.channels * nc + (5.0 + 4.0 * self.probability_channels) * n,
        }


def estimate_peak(
    model: MemoryModel,
    shape: Sequence[int],
    itemsize: int,
    spacing: Sequence[float] | None,
    whole_grid_bytes: float = 0.0,
) -> int:
    """The peak resident bytes of predicting a scan of ``shape`` (X, Y, Z) stored with ``itemsize``
    bytes a voxel at ``spacing`` mm (None: unknown, counted as the target spacing).

    The stages run one after the other and each reuses what the one before freed (glibc keeps it:
    ``perf.retain_memory``), so the peak is the process plus the largest stage, not their sum.

    Args:
        model: the process, network and outputs (:class:`MemoryModel`).
        shape: the input's voxels (of the scan, or of one z-slab).
        itemsize: bytes per stored voxel (2 for int16).
        spacing: the input's voxel size in mm.
        whole_grid_bytes: bytes held over the whole scan meanwhile (a z-split's stitched outputs).

    Returns:
        Bytes.
    """
    n = float(math.prod(int(s) for s in shape))
    largest = max(model.stages(n, itemsize, spacing).values())
    return int(model.process_bytes + SLACK * (largest + whole_grid_bytes))
