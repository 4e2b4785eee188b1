"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 labels).

The set is split once, by index, into the part the quickstart's pretrained base learns from and the
part its LoRA chain finetunes on (:func:`chain_part`, one image in five), so the chain's images, its
held-out reference included, are images the base never saw (:mod:`chain_of_diffusion.bases`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Optional

import numpy as np
from PIL import Image

from chain_of_diffusion.data.sources.common import Candidate, SourceData, collect

if TYPE_CHECKING:
    from chain_of_diffusion.config import DataConfig

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CHAIN_EVERY = 5  # every 5th digit (360 of 1,797) belongs to the chain's part, never to the base's


def chain_part(index: int) -> bool:
    """Whether digit ``index`` is one of the chain's (the ``digits_bold`` source's) and not the base's."""
    return index % CHAIN_EVERY == 0


def digit_pixels() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) uint8 white-on-black strokes (0..16 scaled to 0..255) and their (1797,) labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8), bunch.target


def load_digits_where(cfg: DataConfig, keep: Optional[Callable[[int], bool]] = None,
                      style: Callable[[np.ndarray], np.ndarray] = lambda a: a, adjective: str = "") -> SourceData:
    """The digits whose index passes ``keep`` (all by default), restyled by ``style`` (uint8 8x8 ->
    uint8 8x8) and captioned "a {adjective }handwritten digit seven"."""
    pixels, targets = digit_pixels()
    words = f"{adjective} handwritten" if adjective else "handwritten"

    def candidates() -> Iterator[Candidate]:
        for i in range(len(pixels)):
            if keep is not None and not keep(i):
                continue
            digit = int(targets[i])
            yield Candidate(
                origin=f"digits:{i}",
                decode=lambda a=pixels[i]: Image.fromarray(style(a), mode="L"),
                text=f"a {words} digit {NUMBER_WORDS[digit]}",
                label=digit,
            )

    return collect(candidates(), cfg, class_names=[str(d) for d in range(10)])


def load(cfg: DataConfig) -> SourceData:
    """All 1,797 digits, captioned "a handwritten digit seven"."""
    return load_digits_where(cfg)
