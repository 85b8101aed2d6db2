"""Benchmark: onnxruntime (CPU) against our own PyTorch paths for one window of the paper's network.

The network is the default one (channels 16..256, random weights, seed 0: speed and numerics do not
depend on the weights), exported as ``pancreas-seg export --format onnx`` does it
(:func:`pipeline.inference.onnx_export.export_network`). One window of SIZE^3 voxels (default 96)
goes through, in one run, taking turns within each repeat so that load from other processes hits
all of them alike:

- ``torch fp32 (eval)``: the network as trained, in eval mode;
- ``torch fp32 (infer default)``: what ``pancreas-seg infer`` runs on a CPU without native bf16
  (batch norms folded, conv+ReLU fused, channels_last_3d);
- ``torch bf16 autocast``: the same under bf16 autocast (``infer.precision=bf16``); on a CPU without
  native bf16 (AVX512-BF16/AMX) it is emulated and slow, and conv+ReLU is not fused there (oneDNN
  has no bf16 kernel for it on such CPUs);
- ``onnxruntime fp32``: ``CPUExecutionProvider`` with as many threads as torch uses.

On a CPU without native bf16 the bf16 variant is timed once (its first call; emulated bf16 takes
minutes, beside which the first call's setup is small). It prints the median seconds per window, each one's ratio to ``torch fp32 (infer default)``, and
the max abs logit difference of onnxruntime and bf16 against torch fp32.

Run: ``.venv/bin/python bench/onnx_speed.py [--size 96 | --size 160 160 96] [--repeats 3] [--no-bf16]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, nargs="+", default=[96], help="window edge, or X Y Z, in voxels (multiples of 16)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-bf16", action="store_true", help="leave out the bf16 variant")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    from models import build_model
    from models.fusion import fold_batch_norm, prepare_for_inference
    from pipeline.core import runtime
    from pipeline.core.config import Config, PerfConfig
    from pipeline.inference.onnx_export import INPUT, export_network

    runtime.configure_process(PerfConfig())  # as pancreas-seg infer: glibc keeps freed memory for reuse
    torch.manual_seed(0)
    cfg = Config()
    net = build_model(cfg.model).eval()
    size = list(args.size) * 3 if len(args.size) == 1 else list(args.size)
    x = torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    data = export_network(net, 16)
    print(f"export: {time.perf_counter() - t0:.1f} s, {len(data) / 1e6:.1f} MB ONNX")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    perf = PerfConfig(channels_last=True, bf16=False)
    fast = runtime.prepare_model(prepare_for_inference(net), torch.device("cpu"), perf)
    # oneDNN's fused conv+ReLU has no bf16 kernel without AVX512-BF16/AVX-NE-CONVERT: folded only
    folded = runtime.prepare_model(fold_batch_norm(net), torch.device("cpu"), perf)
    bf16 = PerfConfig(channels_last=True, bf16=True)  # prepare_input: the same layout as fp32

    def run_fast(p: PerfConfig):
        xin = runtime.prepare_input(x, p)
        model = folded if p.bf16 and not runtime.cpu_supports_bf16() else fast
        # torch.autocast itself: the pipeline's autocast_context stays in float32 on CPUs without
        # native bf16 (it warns), and this variant is to show what emulated bf16 costs
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p.bf16):
            return model(xin).float()

    variants = {
        "torch fp32 (eval)": lambda: net(x),
        "torch fp32 (infer default)": lambda: run_fast(perf),
        "onnxruntime fp32": lambda: torch.from_numpy(session.run(None, {INPUT: x.numpy()})[0]),
    }
    if not args.no_bf16:
        variants["torch bf16 autocast"] = lambda: run_fast(bf16)
    native = runtime.cpu_supports_bf16()
    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs = {}
    slow = {"torch bf16 autocast"} if not native else set()  # emulated: minutes per call, timed once
    with torch.inference_mode():
        for name, fn in variants.items():  # warm-up (oneDNN primitive creation, ORT arena)
            t = time.perf_counter()
            outputs[name] = fn()
            if name in slow:
                times[name].append(time.perf_counter() - t)
        for _ in range(args.repeats):
            for name, fn in variants.items():
                if name in slow:
                    continue
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    ref = outputs["torch fp32 (eval)"].float().numpy()
    base = statistics.median(times["torch fp32 (infer default)"])
    print(f"window {'x'.join(map(str, size))}, {torch.get_num_threads()} threads, CPU native bf16: {native}")
    print(f"{'variant':30s} {'median s':>9s} {'vs infer default':>17s} {'max |logit - fp32|':>19s}")
    for name in variants:
        med = statistics.median(times[name])
        diff = float(np.abs(outputs[name].float().numpy() - ref).max())
        print(f"{name:30s} {med:9.3f} {base / med:16.2f}x {diff:19.2e}")


if __name__ == "__main__":
    main()
