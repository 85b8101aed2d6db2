"""What each inference shortcut of the network is worth, measured side by side in one run.

Times our network's forward pass on one 96^3 patch (channels 16..256, eval mode, no gradients)
with the pipeline's fastest CPU options (channels-last, bf16 autocast where the CPU has it, freed
memory retained), first with none of the shortcuts and then adding them one at a time:

1. ``upsample_concat``: the decoder's x2 upsampling written straight into the concatenation
   (:func:`models.resample.upsample_concat`) instead of ``F.interpolate`` then ``torch.cat``;
2. ``max pool``: 2^d max pooling one axis at a time (:class:`models.blocks.MaxPool3d`) instead
   of PyTorch's kernel;
3. ``conv+ReLU``: each convolution fused with its ReLU (:func:`models.fusion.fuse_conv_relu`).

Every variant has its batch norms folded (the inference copy ``infer`` uses); the variants take
turns within each repeat, the fastest repeat counts, and the largest difference of each
variant's logits from the first is printed (float rounding only).

Run: ``.venv/bin/python bench/inference_shortcuts.py [--repeats 10] [--size 96]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models.blocks  # noqa: E402
from models import AttentionUNet  # noqa: E402
from models.fusion import fold_batch_norm, fuse_conv_relu  # noqa: E402
from models.resample import resize_to, upsample_concat  # noqa: E402
from pipeline.core.config import PerfConfig  # noqa: E402
from pipeline.core.runtime import autocast_context, configure_process, cpu_supports_bf16, prepare_input  # noqa: E402


def plain_upsample_concat(skip: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    return torch.cat([skip, resize_to(coarse, skip.shape[2:])], dim=1)


class PlainMaxPool(torch.nn.MaxPool3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(x, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--size", type=int, default=96, help="patch edge (a multiple of 16)")
    args = ap.parse_args()
    perf = PerfConfig(device="cpu", bf16=cpu_supports_bf16(), channels_last=True, retain_memory=True)
    configure_process(perf)
    cpu, fmt = torch.device("cpu"), torch.channels_last_3d
    net = AttentionUNet(channels=(16, 32, 64, 128, 256)).eval()
    folded = fold_batch_norm(net).to(memory_format=fmt)
    fused = fuse_conv_relu(folded)
    slow_pool = fold_batch_norm(net).to(memory_format=fmt)
    slow_pool.pool = PlainMaxPool(2)
    variants = [  # (name, model, upsample_concat)
        ("no shortcut", slow_pool, plain_upsample_concat),
        ("+ upsample_concat", slow_pool, upsample_concat),
        ("+ max pool", folded, upsample_concat),
        ("+ conv+ReLU (the inference copy)", fused, upsample_concat),
    ]
    x = prepare_input(torch.randn(1, 1, *(args.size,) * 3, generator=torch.Generator().manual_seed(0)), perf)
    best = {name: float("inf") for name, _, _ in variants}
    outs: dict[str, torch.Tensor] = {}
    with torch.inference_mode(), autocast_context(cpu, perf):
        for rep in range(args.repeats + 1):  # the first round warms up
            for name, model, up in variants:
                models.blocks.upsample_concat = up  # what UpBlock.forward calls
                t = time.perf_counter()
                y = model(x)
                if rep:
                    best[name] = min(best[name], time.perf_counter() - t)
                outs.setdefault(name, y.float())
    models.blocks.upsample_concat = upsample_concat
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {perf.bf16=}, patch {args.size}^3")
    base, ref = best[variants[0][0]], outs[variants[0][0]]
    for name, _, _ in variants:
        diff = (outs[name] - ref).abs().max().item()
        print(
            f"{name:<36} {best[name] * 1e3:7.1f} ms  {base / best[name]:5.2f}x  "
            f"max |logit diff| {diff:.3g} (logits up to {ref.abs().max().item():.3g})"
        )


if __name__ == "__main__":
    main()
