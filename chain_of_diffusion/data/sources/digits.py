"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 labels)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from chain_of_diffusion.data.sources.common import Candidate, SourceData, collect

if TYPE_CHECKING:
    from chain_of_diffusion.config import DataConfig

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def load(cfg: DataConfig) -> SourceData:
    """scikit-learn's bundled 8x8 digits: white strokes on black, values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    targets = bunch.target

    def candidates() -> Iterator[Candidate]:
        for i in range(len(pixels)):
            digit = int(targets[i])
            yield Candidate(
                origin=f"digits:{i}",
                decode=lambda a=pixels[i]: Image.fromarray(a, mode="L"),
                text=f"a handwritten digit {NUMBER_WORDS[digit]}",
                label=digit,
            )

    return collect(candidates(), cfg, class_names=[str(d) for d in range(10)])
