"""A small phantom patch and a tiny network overfitted to it: the ``phantom`` and ``overfit`` fixtures
(session-wide, in ``tests/conftest.py``) of the model and runtime tests."""

from __future__ import annotations

import math
import time

import torch

from models import AttentionUNet

TINY = (4, 8, 16, 32, 64)


def make_phantom(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A curved tube (label 1) in noisy, shaded soft tissue, plus an unlabelled blob as bright as the tube."""
    g = torch.Generator().manual_seed(seed)
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij")
    t = z / (n - 1)
    cy = n / 2 + 0.3 * n * torch.sin(math.pi * t)
    cx = n / 2 + 0.25 * n * torch.cos(1.5 * math.pi * t)
    label = (((y - cy) ** 2 + (x - cx) ** 2) < 3.5**2).long()
    blob = ((z - n / 4) ** 2 + (y - n / 5) ** 2 + (x - 3 * n / 4) ** 2) < 16
    shading = 0.2 * torch.sin(x / 5) * torch.cos(y / 7)
    image = shading + label + blob.float() + 0.4 * torch.randn(n, n, n, generator=g)
    return image[None, None], label[None, None]


def dice(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """Dice of the foreground (label 1) of two label maps."""
    p, r = pred == 1, ref == 1
    denom = p.sum() + r.sum()
    return 1.0 if denom == 0 else float(2 * (p & r).sum() / denom)


def overfit_model(phantom: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """A tiny attention U-Net trained on the phantom with MONAI's deep-supervision Dice+CE loss."""
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    image, label = phantom
    torch.manual_seed(0)
    model = AttentionUNet(channels=TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))
    start, best, steps = time.perf_counter(), 0.0, 0
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # a tiny network gains nothing from a 2nd thread, and loses much on a busy machine
    try:
        best, steps = _train(model, opt, loss_fn, image, label)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return {"model": model, "dice": best, "steps": steps, "seconds": time.perf_counter() - start}


def _train(model, opt, loss_fn, image, label) -> tuple[float, int]:
    best, steps = 0.0, 0
    for steps in range(1, 301):
        model.train()
        loss = loss_fn(model(image), label.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if steps % 5 == 0:
            model.eval()
            with torch.no_grad():
                best = dice(model(image).argmax(1, keepdim=True), label)
            if best > 0.95:
                break
    return best, steps
