"""pipeline.core.runtime: device choice and speed options, each agreeing with float32."""

from __future__ import annotations

import contextlib
import copy
import os

import pytest
import torch

from models import AttentionUNet
from pipeline.core import runtime
from pipeline.core.config import PerfConfig
from pipeline.core.errors import ConfigError
from tests.conftest import REPO
from tests.tiny_net import TINY, dice

CUDA = torch.cuda.is_available()


def _predict(model, image, perf, device=torch.device("cpu")):
    model = runtime.prepare_model(copy.deepcopy(model), device, perf).eval()
    x = runtime.prepare_input(image.to(device), perf)
    with torch.no_grad(), runtime.autocast_context(device, perf):
        logits = model(x)
    return logits.float().argmax(1, keepdim=True).cpu()


def test_select_device():
    assert runtime.select_device(PerfConfig(device="cpu")) == torch.device("cpu")
    assert runtime.select_device(PerfConfig(device="auto")).type == ("cuda" if CUDA else "cpu")
    if not CUDA:  # the name's form is checked with the config (tests/pipeline/core/test_config.py)
        with pytest.raises(ConfigError, match="CUDA is not available"):
            runtime.select_device(PerfConfig(device="cuda"))


def test_no_options_means_no_autocast():
    cpu = torch.device("cpu")
    assert runtime.autocast_dtype(cpu, PerfConfig(bf16=False)) is None
    assert isinstance(runtime.autocast_context(cpu, PerfConfig(bf16=False)), contextlib.nullcontext)
    x = torch.randn(1, 1, 16, 16, 16)
    assert runtime.prepare_input(x, PerfConfig()) is x


def test_channels_last_layout_and_agreement(overfit, phantom):
    image, label = phantom
    perf = PerfConfig(device="cpu", channels_last=True)
    x = runtime.prepare_input(image, perf)
    assert x.is_contiguous(memory_format=torch.channels_last_3d)
    model = runtime.prepare_model(copy.deepcopy(overfit["model"]), torch.device("cpu"), perf)
    assert model.encoders[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    ref = _predict(overfit["model"], image, PerfConfig(device="cpu"))
    assert dice(_predict(overfit["model"], image, perf), ref) >= 0.99
    assert dice(ref, label) > 0.9  # the reference itself is a real segmentation


@pytest.mark.skipif(not runtime.cpu_supports_bf16(), reason="CPU without native bf16")
@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_inference_agrees_with_fp32(overfit, phantom, channels_last):
    image, _ = phantom
    perf = PerfConfig(device="cpu", bf16=True, channels_last=channels_last)
    assert runtime.autocast_dtype(torch.device("cpu"), perf) is torch.bfloat16
    ref = _predict(overfit["model"], image, PerfConfig(device="cpu"))
    assert dice(_predict(overfit["model"], image, perf), ref) >= 0.99


def test_bf16_training_step_runs_channels_last():
    if not runtime.cpu_supports_bf16():
        pytest.skip("CPU without native bf16")
    perf = PerfConfig(device="cpu", bf16=True, channels_last=True)
    torch.manual_seed(0)
    model = runtime.prepare_model(AttentionUNet(channels=TINY), torch.device("cpu"), perf).train()
    x = runtime.prepare_input(torch.randn(2, 1, 32, 32, 32), perf)
    with runtime.autocast_context(torch.device("cpu"), perf):
        out = model(x)
    assert out[0].dtype == torch.bfloat16
    sum(o.float().mean() for o in out).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_compile_failure_falls_back_to_eager(caplog):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    torch.manual_seed(0)
    model = AttentionUNet(channels=TINY).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        ref = model(x)
        runtime._compile_with_fallback(model, backend=broken_backend)
        with caplog.at_level("WARNING"):
            out = model(x)
    torch.testing.assert_close(out, ref)
    assert "running eagerly" in caplog.text
    assert model._compiled_call_impl is None  # later calls skip the compiler
    with pytest.raises(ValueError, match="divisible"):  # the model's own errors still surface
        model(torch.randn(1, 1, 30, 32, 32))


def test_set_threads():
    before = torch.get_num_threads()
    try:
        runtime.set_threads(PerfConfig(threads=1))
        assert torch.get_num_threads() == 1
        runtime.set_threads(PerfConfig(threads=0))
        assert torch.get_num_threads() == 1  # 0 leaves the setting alone
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_amp_agrees_and_trains(overfit, phantom):
    image, _ = phantom
    device = runtime.select_device(PerfConfig(device="cuda"))
    perf = PerfConfig(device="cuda", amp=True, channels_last=True)
    assert runtime.autocast_dtype(device, perf) in (torch.bfloat16, torch.float16)
    ref = _predict(overfit["model"], image, PerfConfig(device="cuda", amp=False), device)
    assert dice(_predict(overfit["model"], image, perf, device), ref) >= 0.99
    model = runtime.prepare_model(AttentionUNet(channels=TINY), device, perf).train()
    with runtime.autocast_context(device, perf):
        out = model(runtime.prepare_input(torch.randn(2, 1, 32, 32, 32, device=device), perf))
    sum(o.float().mean() for o in out).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_configure_process_enables_huge_pages(monkeypatch):
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    runtime.configure_process(PerfConfig(huge_pages=False))
    assert "THP_MEM_ALLOC_ENABLE" not in runtime.os.environ
    runtime.configure_process(PerfConfig(huge_pages=True))
    assert runtime.os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    runtime.configure_process(PerfConfig(huge_pages=True))
    assert runtime.os.environ["THP_MEM_ALLOC_ENABLE"] == "0"  # the user's explicit choice wins


_RETENTION_PROBE = """
from pathlib import Path
import torch
from pipeline.core import runtime

def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0

def rss_after_free():
    t = torch.ones(16 * 2**20)  # 64 MB, touched
    before = rss_mb()
    del t
    return before - rss_mb()  # what freeing it gave back

assert runtime.retain_freed_memory(True) is True
kept = rss_after_free()
assert runtime.retain_freed_memory(False) is True
returned = rss_after_free()
print(kept, returned)
"""


def test_retain_freed_memory_keeps_big_blocks_mapped():
    """With retention a freed 64 MB block is reused from the heap; without it glibc unmaps it.

    Measured in a fresh process: in a long test session the heap holds other blocks above the
    freed one, and glibc then keeps it whatever the setting (the test failed at random that way).
    """
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert runtime.retain_freed_memory(True) is False  # nothing to do on other C libraries
        return
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _RETENTION_PROBE], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-2000:]
    kept, returned = map(float, done.stdout.split()[-2:])
    assert kept < 16, f"retention on, yet {kept:.0f} MB went back to the system"
    assert returned > 48, f"retention off, yet only {returned:.0f} MB went back to the system"


def test_configure_process_applies_retention(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "retain_freed_memory", calls.append)
    runtime.configure_process(PerfConfig())
    runtime.configure_process(PerfConfig(retain_memory=False))
    assert calls == [True, False]  # on by default, off on request


def test_retention_off_leaves_an_untouched_glibc_alone(monkeypatch):
    """perf.retain_memory=false must not call mallopt: any call ends glibc's dynamic mmap threshold."""
    calls = []
    monkeypatch.setattr(runtime, "_glibc_mallopt", lambda: lambda *a: calls.append(a) or 1)
    monkeypatch.setattr(runtime, "_retaining", False)
    assert runtime.retain_freed_memory(False) is True
    assert calls == []
    assert runtime.retain_freed_memory(True) is True
    assert len(calls) == 2 and runtime._retaining is True


def test_missing_bf16_is_said_once(monkeypatch, caplog):
    """A CPU without bf16 falls back to float32 with one warning, not one per step or window."""
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    runtime._warn_no_bf16.cache_clear()
    perf = PerfConfig(device="cpu", bf16=True)
    with caplog.at_level("WARNING"):
        dtypes = [runtime.autocast_dtype(torch.device("cpu"), perf) for _ in range(5)]
    assert dtypes == [None] * 5
    assert caplog.text.count("no native bf16 instructions") == 1
