"""Device selection and the speed options of :class:`~pipeline.core.config.PerfConfig`.

Each option is correct on its own (``tests/pipeline/core/test_runtime.py`` checks that masks agree with
float32 to Dice >= 0.99): ``channels_last`` (channels_last_3d memory format), ``bf16`` (bfloat16
autocast on CPUs with native bf16 instructions), ``amp`` (bf16, or fp16 where the GPU lacks bf16,
autocast on CUDA), ``compile`` (``torch.compile``, falling back to eager if compilation fails) and
``threads``; ``retain_memory`` (the C allocator keeps freed memory, so large activations are not
page-faulted in afresh on every pass), ``huge_pages`` (transparent huge pages for large CPU
tensors) and the inference copy (:func:`models.fusion.prepare_for_inference`: BN folding, conv + ReLU
fusion) change no result beyond float rounding. On a 2-core AVX512-BF16 CPU channels-last + bf16
is the fastest combination (``bench/model_speed.py``); ``torch.compile`` was slower there (for
inference too, with inductor's weight freezing: 0.34 s against 0.17 s eager on a 96^3 patch)
and takes minutes to compile.
"""

from __future__ import annotations

import contextlib
import logging
import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from pipeline.core.config import PerfConfig
from pipeline.core.errors import ConfigError

__all__ = [
    "select_device",
    "cpu_supports_bf16",
    "autocast_dtype",
    "autocast_context",
    "prepare_model",
    "prepare_input",
    "set_threads",
    "configure_process",
    "retain_freed_memory",
    "reset_peak_rss",
    "peak_rss_mb",
]

log = logging.getLogger(__name__)


def select_device(perf: PerfConfig) -> torch.device:
    """The device named by ``perf.device``: ``"auto"`` is CUDA when available, else the CPU.

    The name's form (auto, cpu, cuda, cuda:N) is checked when the config is loaded; what this
    machine has is checked here.

    Raises:
        ConfigError: CUDA is asked for but not available, or not that many CUDA devices.
    """
    name = (perf.device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"perf.device={perf.device}: CUDA is not available on this machine (use auto or cpu)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"perf.device={perf.device}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    return device


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX-BF16) that oneDNN uses.

    oneDNN also emulates bf16 on plain AVX512 CPUs, correctly but slower than float32; this
    returns False there, so ``perf.bf16`` is a speed option only where it speeds things up.
    """
    try:
        if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: trust oneDNN's answer
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def autocast_dtype(device: torch.device, perf: PerfConfig) -> torch.dtype | None:
    """The autocast dtype the options give on ``device``, or None for float32.

    CPU: bfloat16 when ``perf.bf16`` and :func:`cpu_supports_bf16` (else float32, with a warning).
    CUDA: with ``perf.amp``, bfloat16 where the GPU supports it, else float16 (which needs a
    ``torch.amp.GradScaler`` in training).
    """
    if device.type == "cpu":
        if not perf.bf16:
            return None
        if not cpu_supports_bf16():
            _warn_no_bf16()
            return None
        return torch.bfloat16
    if device.type == "cuda" and perf.amp:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


@lru_cache(maxsize=1)
def _warn_no_bf16() -> None:
    """Once per process: autocast is set up at every training step and every validation window."""
    log.warning("warning: perf.bf16: this CPU has no native bf16 instructions; running in float32")


def autocast_context(device: torch.device, perf: PerfConfig) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for the dtype of :func:`autocast_dtype`, or a no-op context."""
    dtype = autocast_dtype(device, perf)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _memory_format(ndim: int) -> torch.memory_format | None:
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim)


def prepare_model(model: nn.Module, device: torch.device, perf: PerfConfig) -> nn.Module:
    """Move ``model`` to ``device`` and apply ``channels_last`` and ``compile``.

    Compilation is in place (``nn.Module.compile``), so the state dict keys and methods such as
    ``attention_maps`` stay as they are. Compilation happens at the first call; if it fails there
    (no C++ compiler, an unsupported operator) the model runs eagerly and a warning is logged.

    Args:
        model: the network (with its trained weights loaded).
        device: target device.
        perf: the speed options.

    Returns:
        The same module object. For inference, pass the copy that
        :func:`models.fusion.prepare_for_inference` returns (batch norms folded into the
        convolutions, each conv fused with its ReLU; its speed-up is in README.md, "The model").
    """
    model = model.to(device)
    if perf.channels_last:
        spatial_dims = getattr(model, "spatial_dims", 3)
        model = model.to(memory_format=torch.channels_last_3d if spatial_dims == 3 else torch.channels_last)
    if perf.compile:
        _compile_with_fallback(model)
    return model


def _compile_with_fallback(model: nn.Module, **compile_kwargs) -> None:
    """``model.compile(**compile_kwargs)`` whose first compiler failure reverts the module to eager."""
    try:
        model.compile(**compile_kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure of the optional compiler means eager
        log.warning("warning: perf.compile: torch.compile unavailable (%s); running eagerly", exc)
        return
    compiled = model._compiled_call_impl

    def call(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            if not _looks_like_compiler_error(exc):
                raise
            log.warning(
                "warning: perf.compile: torch.compile failed (%s: %s); running eagerly",
                type(exc).__name__,
                exc,
            )
            model._compiled_call_impl = None
            return model._call_impl(*args, **kwargs)

    model._compiled_call_impl = call


def _looks_like_compiler_error(exc: Exception) -> bool:
    """Errors raised by dynamo/inductor, not by the model itself (a bad input shape, say)."""
    mod = type(exc).__module__ or ""
    return (
        mod.startswith(("torch._dynamo", "torch._inductor", "torch.fx"))
        or "BackendCompilerFailed" in type(exc).__name__
    )


def prepare_input(x: torch.Tensor, perf: PerfConfig) -> torch.Tensor:
    """``x`` in the channels-last memory format when ``perf.channels_last`` (else unchanged)."""
    fmt = _memory_format(x.dim()) if perf.channels_last else None
    return x.contiguous(memory_format=fmt) if fmt is not None else x


def configure_process(perf: PerfConfig) -> None:
    """Process-wide settings: :func:`set_threads`, :func:`retain_freed_memory` and huge pages.

    With ``perf.retain_memory`` (the default) the C allocator keeps freed memory for reuse. A
    U-Net's activations are tens of MB each (a 96^3 patch with 32 channels is 57 MB in bf16
    or 113 MB in float32), and by default glibc gives every such block its own ``mmap`` and
    returns it on free, so each forward pass page-faults all of its activations in again.
    Keeping them makes CPU training steps and inference faster, MONAI's network more than ours
    (``bench/model_speed.py``; the numbers are in README.md, "Speed options"); the price is that
    the resident memory stays at the process's peak instead of falling between cases.

    ``THP_MEM_ALLOC_ENABLE=1`` (``perf.huge_pages``) makes PyTorch's CPU allocator back tensors
    of 2 MB and more with transparent huge pages, another way to cut page faults. It is off by
    default: on a busy 2-core machine it made our fp32 and bf16 *training* steps slower (the
    kernel compacts memory on the spot to find huge pages), while inference gained 5-20 %.
    PyTorch reads the variable once, at its first large allocation, so call this before
    building models and loading data. An explicit ``THP_MEM_ALLOC_ENABLE`` is left alone.
    """
    set_threads(perf)
    retain_freed_memory(perf.retain_memory)
    if perf.huge_pages:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


# glibc's mallopt parameters (malloc.h) and the defaults it starts with
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_RETAINED_TRIM_THRESHOLD = 2**31 - 1  # give back free memory only beyond 2 GB at the heap's top


@lru_cache(maxsize=1)
def _glibc_mallopt():
    """glibc's ``mallopt``, or None on other C libraries and systems."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def retain_freed_memory(on: bool = True) -> bool:
    """Make glibc keep freed memory for reuse (``on``) or return it to the system (its default).

    ``on`` serves every allocation from the heap (``M_MMAP_MAX=0``) and trims the heap only
    when more than 2 GB at its top is free, so a network's activations reuse memory that is
    already mapped instead of page-faulting fresh pages on every forward pass. Off, while
    retention was never turned on in this process, changes nothing: glibc keeps its own
    behaviour, including its dynamic mmap threshold (which any ``mallopt`` call would switch
    off). Off after on sets glibc's starting values again and returns the free memory kept so
    far; the dynamic threshold then stays off for the rest of the process. Takes effect at
    once, for this process and the workers it forks later.

    Returns:
        False where the C library is not glibc (nothing changed), else True.
    """
    global _retaining
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    if not on and not _retaining:
        return True  # glibc untouched: its defaults, dynamic threshold included
    mmap_max, trim = (0, _RETAINED_TRIM_THRESHOLD) if on else (_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD)
    ok = bool(mallopt(_M_MMAP_MAX, mmap_max)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
    _retaining = on
    if not on:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)  # hand back what was kept so far
    return ok


_retaining = False  # whether retain_freed_memory(True) is in effect in this process


def set_threads(perf: PerfConfig) -> None:
    """Set torch's intra-op threads to ``perf.threads`` (0 keeps torch's default)."""
    if perf.threads > 0:
        torch.set_num_threads(perf.threads)


def reset_peak_rss() -> bool:
    """Reset this process's peak resident memory (Linux); False where that is not possible."""
    try:  # Linux: "5" resets this process's peak RSS (VmHWM), so each case gets its own peak
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB since the last :func:`reset_peak_rss`."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    import resource  # elsewhere: the process's peak so far

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
