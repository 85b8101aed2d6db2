"""Model benchmark of ``bench/gpu_check.sh``: one training step and one inference window of the network.

Times a training step (batch 2, forward + backward + SGD step, deep-supervision Dice+CE loss, AMP on
CUDA as training uses it) and one inference window (AMP on CUDA), each after untimed warm-up calls,
and prints one line per measurement plus the device and the peak GPU memory. The default sizes are the
paper's: channels 16..256 (``configs/default.yaml``) and 160x160x96 patches.

Run: ``python bench/gpu_model_check.py [--device cuda] [--patch 160 160 96] [--steps 5]`` (``--tiny``:
channels 4..64 and 32^3 patches, for the quick CPU mode of ``gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--patch", type=int, nargs=3, default=[160, 160, 96])
    parser.add_argument("--steps", type=int, default=5, help="timed repetitions (after 2 warm-up calls)")
    parser.add_argument("--tiny", action="store_true", help="channels 4..64, 32^3 patch")
    args = parser.parse_args()

    import torch

    from models import build_model
    from pipeline.core.config import Config, PerfConfig
    from pipeline.core.runtime import autocast_context, select_device
    from pipeline.training.train import build_loss

    cfg = Config()
    patch = [32, 32, 32] if args.tiny else args.patch
    if args.tiny:
        cfg.model.channels = [4, 8, 16, 32, 64]
    perf = PerfConfig(device=args.device, amp=True)
    device = select_device(perf)
    cuda = device.type == "cuda"
    print(
        f"device {torch.cuda.get_device_name(device) if cuda else 'cpu'}, torch {torch.__version__}",
        flush=True,
    )

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    torch.manual_seed(0)
    net = build_model(cfg.model).to(device)
    loss_fn = build_loss(cfg)  # the training loss (deep supervision)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(enabled=cuda and not torch.cuda.is_bf16_supported())
    x = torch.randn(2, 1, *patch, device=device)
    y = (torch.rand(2, 1, *patch, device=device) > 0.9).float()  # as MONAI gives labels

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, perf):
            loss = loss_fn(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def timed(fn, n: int) -> float:
        for _ in range(2):
            fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - t0) / n

    net.train()
    train_s = timed(train_step, args.steps)
    net.eval()
    window = x[:1]

    def infer_window() -> None:
        with torch.inference_mode(), autocast_context(device, perf):
            net(window)

    infer_s = timed(infer_window, args.steps)
    size = "x".join(map(str, patch))
    print(f"train step, batch 2, {size}: {1000 * train_s:.1f} ms")
    print(f"inference, one {size} window: {1000 * infer_s:.1f} ms")
    if cuda:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
