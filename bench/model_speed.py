"""Speed of our Attention U-Net against MONAI's AttentionUnet, measured side by side in one run.

Times a training step (batch 2, forward + backward + Adam step, deep-supervision Dice+CE loss) on
64^3 and 96^3 patches and inference on one 96^3 patch, for our network with several speed options,
our plain U-Net (``attention=False``) and ``monai.networks.nets.AttentionUnet`` with the same
channels. Every model sees the same input; the variants take turns within each repeat and the
fastest repeat counts, so load from other processes hits all of them alike. The CPU option
``retain`` (``perf.retain_memory``: the C allocator keeps freed memory, so activations are not
page-faulted in afresh on every pass) is process-wide and cannot be undone exactly (any
``mallopt`` call ends glibc's dynamic mmap threshold), so the run has two phases: first every
variant without it, with glibc untouched, then every variant with it. Each variant makes one
untimed call before its timed ones, so all are timed in the steady state of a training loop or a
sliding window. "monai fp32" is MONAI's network as its users run it (no option, glibc's own
allocator behaviour) and the baseline of the targets; the rows "monai fp32+retain" and "monai
<fastest options>" give MONAI the same process setting and options, for reference. FLOPs come
from ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products); achieved
GFLOP/s are compared with a float32 GEMM (``torch.mm``) timed in the same run, and the bfloat16
GEMM rate is printed where bf16 is native.

Usage::

    python bench/model_speed.py            # CPU, all sizes, 3 repeats
    python bench/model_speed.py --quick    # 64^3 training + 96^3 inference, fewer variants
    python bench/model_speed.py --device cuda --quick
    python bench/model_speed.py --compile  # also try torch.compile (minutes of compilation on a CPU)
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import AttentionUNet  # noqa: E402
from models.fusion import prepare_for_inference  # noqa: E402
from pipeline.core.config import PerfConfig  # noqa: E402
from pipeline.core.runtime import (  # noqa: E402
    autocast_context,
    configure_process,
    cpu_supports_bf16,
    prepare_input,
    prepare_model,
    retain_freed_memory,
)

CHANNELS = (16, 32, 64, 128, 256)


@dataclass
class Variant:
    name: str
    family: str  # "ours" | "unet" | "monai"
    perf: PerfConfig


def build(family: str) -> torch.nn.Module:
    if family == "monai":
        from monai.networks.nets import AttentionUnet

        return AttentionUnet(
            spatial_dims=3, in_channels=1, out_channels=2, channels=CHANNELS, strides=(2, 2, 2, 2)
        )
    return AttentionUNet(channels=CHANNELS, attention=family == "ours")


def variants(device: torch.device, quick: bool, compile_: bool) -> list[Variant]:
    base = PerfConfig(device=device.type, amp=False, bf16=False, channels_last=False, retain_memory=False)
    if device.type == "cuda":
        opts = {
            "fp32": base,
            "amp": replace(base, amp=True),
            "amp+cl": replace(base, amp=True, channels_last=True),
        }
        fast = "amp+cl"
        reference = ["fp32", fast]
    else:
        bf16 = cpu_supports_bf16()
        opts = {"fp32": base, "cl": replace(base, channels_last=True)}
        if bf16:
            opts["bf16"] = replace(base, bf16=True)
            opts["cl+bf16"] = replace(base, bf16=True, channels_last=True)
        best = "cl+bf16" if bf16 else "cl"
        fast = best + "+retain"
        opts[fast] = replace(opts[best], retain_memory=True)
        reference = ["fp32", "fp32+retain", fast]
        opts["fp32+retain"] = replace(base, retain_memory=True)
    if compile_:
        opts[fast + "+compile"] = replace(opts[fast], compile=True)
    ours = [n for n in opts if n != "fp32+retain"]
    names = ours if not quick else list(dict.fromkeys(["fp32", fast.removesuffix("+retain"), fast]))
    out = [Variant(f"ours {n}", "ours", opts[n]) for n in names]
    out += [Variant(f"unet {n}", "unet", opts[n]) for n in ("fp32", fast)]
    out += [Variant(f"monai {n}", "monai", opts[n]) for n in reference]
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_gflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    reps = 20 if device.type == "cuda" else 3
    best = float("inf")
    for _ in range(3):
        torch.mm(a, b)
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync(device)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n**3 / best / 1e9


def make_loss(family: str):
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    if family == "monai":
        return dice_ce
    return DeepSupervisionLoss(dice_ce, weights=[1.0, 0.5, 0.25, 0.125, 0.0625])


class Task:
    """One timed workload (a training step or an inference) for every variant, interleaved."""

    def __init__(self, kind: str, size: int, batch: int, device: torch.device) -> None:
        self.kind, self.size, self.batch, self.device = kind, size, batch, device
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 1, size, size, size, generator=g).to(device)
        self.y = (torch.rand(batch, 1, size, size, size, generator=g) > 0.9).float().to(device)
        self.state: dict[str, tuple] = {}

    @property
    def label(self) -> str:
        return f"{self.kind} {self.size}^3 b{self.batch}"

    def setup(self, v: Variant) -> None:
        model = build(v.family)
        if self.kind == "infer":  # eval-mode BN statistics, folded into the convs where adjacent
            model = prepare_model(prepare_for_inference(model.eval()), self.device, v.perf)
        else:
            model = prepare_model(model, self.device, v.perf).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4) if self.kind == "train" else None
        self.state[v.name] = (model, opt, make_loss(v.family), prepare_input(self.x, v.perf))

    def run(self, v: Variant) -> float:
        """One timed call of ``v`` (``main`` makes one untimed warm-up call after :meth:`setup`)."""
        model, opt, loss_fn, x = self.state[v.name]
        sync(self.device)
        t = time.perf_counter()
        if self.kind == "train":
            with autocast_context(self.device, v.perf):
                out = model(x)
            out = [o.float() for o in out] if isinstance(out, list) else out.float()
            loss = loss_fn(out, self.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode(), autocast_context(self.device, v.perf):
                model(x)
        sync(self.device)
        return time.perf_counter() - t

    def flops(self, family: str) -> float:
        model = build(family).to(self.device).train(self.kind == "train")
        with FlopCounterMode(display=False) as counter:
            if self.kind == "train":
                out = model(self.x)
                out = out if isinstance(out, list) else [out]
                sum(o.float().mean() for o in out).backward()
            else:
                with torch.no_grad():
                    model(self.x)
        return float(counter.get_total_flops())

    def teardown(self) -> None:
        self.state.clear()
        gc.collect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64^3 training and 96^3 inference, fewer variants")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--repeats", type=int, default=0, help="timed repeats (CPU: 3, quick 2; CUDA: 20, quick 10)"
    )
    ap.add_argument(
        "--compile", action="store_true", help="also time torch.compile (slow to compile on a CPU)"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--huge-pages", action="store_true", help="THP_MEM_ALLOC_ENABLE=1 for all models")
    args = ap.parse_args()
    device = torch.device(args.device)
    # retain_memory=False leaves glibc untouched (pipeline.core.runtime.retain_freed_memory)
    configure_process(PerfConfig(threads=args.threads, huge_pages=args.huge_pages, retain_memory=False))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels (all models)
    repeats = args.repeats or (
        (10 if args.quick else 20) if device.type == "cuda" else (2 if args.quick else 3)
    )
    vs = variants(device, args.quick, args.compile)
    tasks = [Task("train", 64, 2, device)]
    if not args.quick:
        tasks.append(Task("train", 96, 2, device))
    tasks.append(Task("infer", 96, 1, device))

    gemm = gemm_gflops(device)
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {repeats}, THP {thp}"
    )
    print(f"float32 GEMM (torch.mm 2048^3): {gemm:.0f} GFLOP/s")
    if device.type == "cuda" or cpu_supports_bf16():
        print(f"bfloat16 GEMM (torch.mm 2048^3): {gemm_gflops(device, torch.bfloat16):.0f} GFLOP/s")
    times: dict[tuple[str, str], float] = {}
    flops: dict[tuple[str, str], float] = {}
    for task in tasks:
        for fam in ("ours", "unet", "monai"):
            flops[(task.label, fam)] = task.flops(fam)
    # Phase 1: glibc's allocator as every PyTorch user has it (no mallopt call yet); phase 2: the
    # variants that retain freed memory, which switches glibc's own behaviour off for good.
    for retain in (False, True):
        phase = [v for v in vs if v.perf.retain_memory is retain]
        if not phase:
            continue
        if retain:
            retain_freed_memory(True)
        for task in tasks:
            for v in phase:
                task.setup(v)
                t = time.perf_counter()
                task.run(v)  # warm-up (and compilation): every variant is timed in its steady state
                if v.perf.compile:
                    print(f"  {v.name}: first {task.label} call (compile) {time.perf_counter() - t:.1f} s")
            for _ in range(repeats):
                for v in phase:
                    t = task.run(v)
                    times[(task.label, v.name)] = min(t, times.get((task.label, v.name), float("inf")))
            task.teardown()
    report(tasks, vs, times, flops, gemm)


def report(tasks, vs, times, flops, gemm) -> None:
    labels = [t.label for t in tasks]
    head = f"{'model':<24}" + "".join(f"{lab + ' s':>18}{'GFLOP/s':>9}{'/GEMM':>7}" for lab in labels)
    print("\n" + head + "\n" + "-" * len(head))
    for v in vs:
        row = f"{v.name:<24}"
        for lab in labels:
            t = times[(lab, v.name)]
            gf = flops[(lab, v.family)] / t / 1e9
            row += f"{t:>18.3f}{gf:>9.1f}{gf / gemm:>7.2f}"
        print(row)
    print(
        "\nGFLOP per call (FlopCounterMode): "
        + "; ".join(
            f"{lab}: "
            + ", ".join(f"{fam} {flops[(lab, fam)] / 1e9:.1f}" for fam in ("ours", "unet", "monai"))
            for lab in labels
        )
    )
    print("\nratios (target in brackets)")
    ours = [v for v in vs if v.family == "ours"]
    for lab in labels:
        best = min(ours, key=lambda v: times[(lab, v.name)])
        target = 0.5 if lab.startswith("train") else 0.35
        r = times[(lab, best.name)] / times[(lab, "monai fp32")]
        ok = "ok" if r <= target else "MISSED"
        print(f"  {lab}: fastest ours ({best.name}) / monai fp32 = {r:.2f} [<= {target}] {ok}")
        opts = best.name.removeprefix("ours ")
        for o in dict.fromkeys(["fp32", opts]):
            if (lab, f"unet {o}") in times:
                g = times[(lab, f"ours {o}")] / times[(lab, f"unet {o}")]
                ok = "ok" if g <= 1.15 else "MISSED"
                print(f"  {lab}: attention gates, ours {o} / unet {o} = {g:.2f} [<= 1.15] {ok}")
        for name in [v.name for v in vs if v.family == "monai" and v.name != "monai fp32"]:
            r = times[(lab, best.name)] / times[(lab, name)]
            print(f"  {lab}: fastest ours / {name} (MONAI given the same setting, for reference) = {r:.2f}")


if __name__ == "__main__":
    main()
