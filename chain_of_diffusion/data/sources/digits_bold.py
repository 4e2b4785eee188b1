"""``digits_bold``: the quickstart chain's data, 360 of scikit-learn's digits that the pretrained base
never saw (every 5th), their strokes thickened, captioned "a bold handwritten digit seven".

Both the style and the word "bold" are new to the base (:mod:`chain_of_diffusion.bases`, pretrained
on the other 1,437 digits in their plain style), so a LoRA has something to learn, as when Stable
Diffusion is finetuned on a style; the digit classes are the same, so a classifier trained on this
source's real images says whether a sample shows its caption's digit (``caption_accuracy``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from chain_of_diffusion.data.sources.common import SourceData
from chain_of_diffusion.data.sources.digits import chain_part, load_digits_where

if TYPE_CHECKING:
    from chain_of_diffusion.config import DataConfig

SPREAD = 0.6  # the share of a stroke's brightness its 4 neighbours receive


def thicken(pixels: np.ndarray) -> np.ndarray:
    """A soft dilation of white strokes on black: each pixel becomes the brightest of itself and
    SPREAD x its 4 neighbours. (H, W) uint8 -> (H, W) uint8."""
    a = pixels.astype(np.float32)
    padded = np.pad(a, 1)
    neighbours = np.max(np.stack([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]), axis=0)
    return np.maximum(a, SPREAD * neighbours).round().clip(0, 255).astype(np.uint8)


def load(cfg: DataConfig) -> SourceData:
    return load_digits_where(cfg, keep=chain_part, style=thicken, adjective="bold")
