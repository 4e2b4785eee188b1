"""The small real-data classifier whose penultimate layer is the feature space of ``fd_classifier``.

Trained once per chain on the real training images (labels = classes of the data source). Its
features are far smaller than Inception's and know the data set, so a Fréchet distance in them is
cheap and sensitive on tiny images, but it is *not* an FID and is never called one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from chain_of_diffusion.runs import atomic_replace, atomic_write_json

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Feature maps are downsampled by 2 until they are this small, whatever the input resolution.
MIN_FEATURE_SIZE = 4
STEM_WIDTH = 16
MAX_WIDTH = 128


def _groups(channels: int) -> int:
    """Largest group count <= 8 that divides ``channels``."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: features then do not depend on batch composition or train/eval.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(_groups(c_out), c_out),
        nn.SiLU(),
    )


class FeatureClassifier(nn.Module):
    """Conv net: stem -> stride-2 conv blocks down to ~4x4 -> conv to ``feature_dim`` -> global mean
    pool -> linear head. Kept small so ~600 steps train in seconds on a CPU.

    Input (N, in_channels, H, W) in [-1, 1]; any H, W works (global pooling), ``resolution`` sets how
    many downsampling stages there are.
    """

    def __init__(
        self, in_channels: int = 3, resolution: int = 16, num_classes: int = 10, feature_dim: int = 64
    ):
        super().__init__()
        self.config = {
            "in_channels": int(in_channels),
            "resolution": int(resolution),
            "num_classes": int(num_classes),
            "feature_dim": int(feature_dim),
        }
        num_down = max(1, int(math.log2(max(resolution, 1) / MIN_FEATURE_SIZE)))
        # Narrow at full resolution (where convs cost most), wider after each downsampling.
        layers = [_conv_block(in_channels, STEM_WIDTH, stride=1)]
        for i in range(num_down):
            c_out = min(STEM_WIDTH * 2 ** (i + 1), MAX_WIDTH)
            layers.append(_conv_block(layers[-1][0].out_channels, c_out, stride=2))
        layers.append(_conv_block(layers[-1][0].out_channels, feature_dim, stride=1))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, feature_dim) penultimate activations."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, num_classes) logits."""
        return self.head(self.features(x))


def _init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every conv/linear from ``generator`` so the init does not touch the global RNG."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def _random_shift(x: Tensor, max_shift_px: float, generator: torch.Generator) -> Tensor:
    """Translate each image by up to ``max_shift_px`` pixels (bilinear, border value -1 = background).

    (N, C, H, W) -> (N, C, H, W).
    """
    n, _, h, w = x.shape
    shift = (torch.rand(n, 2, generator=generator) * 2.0 - 1.0) * max_shift_px
    # affine_grid works in [-1, 1] coordinates: one pixel is 2 / size.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = shift[:, 0] * 2.0 / w
    theta[:, 1, 2] = shift[:, 1] * 2.0 / h
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    # grid_sample pads with 0; shift to make the padding -1 (the background of images in [-1, 1]).
    return F.grid_sample(x + 1.0, grid, padding_mode="zeros", align_corners=False) - 1.0


def train_classifier(
    images: Tensor,
    labels: Tensor,
    steps: int,
    seed: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    feature_dim: int = 64,
    num_classes: int | None = None,
    augment: bool = True,
) -> FeatureClassifier:
    """Train a :class:`FeatureClassifier` on real labelled images.

    Deterministic for a seed on CPU: init, batch order and augmentation draw from one own
    ``torch.Generator``; the global RNG is not used. Trains on the images' device.

    Args:
        images: (N, C, H, W) in [-1, 1].
        labels: (N,) int64 class ids in [0, num_classes).
        steps: optimiser steps (AdamW, cosine decay to 0).
        seed: seed of the generator.
        num_classes: size of the head; ``labels.max() + 1`` when None.
        augment: random sub-pixel-to-one-pixel shifts of each training image.

    Returns:
        The model in eval mode.
    """
    if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"need images (N, C, H, W) and labels (N,), got {tuple(images.shape)}, {tuple(labels.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError("train_classifier needs at least 1 image, got 0")
    device = images.device
    labels = labels.to(device=device, dtype=torch.long)
    gen = torch.Generator().manual_seed(int(seed))
    # nn.Module constructors draw their default init from the global RNG; fork it so the caller's
    # random stream is untouched, then re-draw every weight from our own generator.
    with torch.random.fork_rng(devices=[]):
        model = FeatureClassifier(
            in_channels=images.shape[1],
            resolution=images.shape[-1],
            num_classes=int(labels.max().item()) + 1 if num_classes is None else num_classes,
            feature_dim=feature_dim,
        )
    _init_weights(model, gen)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / max(steps, 1)))
    )

    n = images.shape[0]
    order, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        # Epoch-wise shuffling: every image is seen once per pass.
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + batch_size].to(device)
        pos += batch_size
        x = images[idx].float()
        if augment:
            x = _random_shift(x, max_shift_px=1.0, generator=gen)
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def _batched(model: FeatureClassifier, images: Tensor, batch_size: int, fn: str) -> Tensor:
    """Run ``model.<fn>`` in eval mode on batches of exactly ``batch_size`` rows (the last one padded,
    :func:`~chain_of_diffusion.batching.fixed_batches`), so a row's result does not depend on its
    batch mates or on how a set was split over processes; (N, C, H, W) -> (N, ...) float32 on the CPU."""
    from chain_of_diffusion.batching import fixed_batches

    if images.shape[0] == 0:
        return torch.empty(
            0, model.config["feature_dim"] if fn == "features" else model.config["num_classes"]
        )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return fixed_batches(
            lambda x: getattr(model, fn)(x.to(device=device, dtype=torch.float32)).float().cpu(), batch_size, images
        )
    finally:
        model.train(was_training)


def extract_features(model: FeatureClassifier, images: Tensor, batch_size: int = 64) -> Tensor:
    """Penultimate features, no grad, eval mode: (N, C, H, W) in [-1, 1] -> (N, feature_dim) float32, CPU."""
    return _batched(model, images, batch_size, "features")


def accuracy(model: FeatureClassifier, images: Tensor, labels: Tensor, batch_size: int = 64) -> float:
    """Top-1 accuracy on (N, C, H, W) images with (N,) labels."""
    logits = _batched(model, images, batch_size, "forward")
    return float((logits.argmax(dim=1) == labels.cpu()).float().mean())


def save_classifier(model: FeatureClassifier, folder: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``folder`` (created). Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_replace(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    atomic_write_json(folder / CONFIG_NAME, model.config, indent=2, sort_keys=False)
    return folder


def load_classifier(folder: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureClassifier:
    """Load a classifier written by :func:`save_classifier`, in eval mode."""
    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"no classifier at {folder}: {name} is missing")
    config = json.loads((folder / CONFIG_NAME).read_text())
    model = FeatureClassifier(**config)
    model.load_state_dict(load_file(folder / WEIGHTS_NAME))
    return model.to(device).eval()


def cheap_features(classifier: Optional[torch.nn.Module], images: torch.Tensor) -> torch.Tensor:
    """(N, D) features of ``metrics.features``: the classifier's where there is one, else the pixels."""
    if classifier is None:
        return images.flatten(1)
    return extract_features(classifier, images)
