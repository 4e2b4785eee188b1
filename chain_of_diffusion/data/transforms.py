"""Pixel conventions for real images: the one place that decides mode, size and crop.

Every source hands its images through :func:`to_resolution`, so real data, generated data and the
metrics all see RGB squares of ``data.resolution`` pixels made the same way.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)
WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit and 32-bit integer greyscale


def to_8bit(image: Image.Image) -> Image.Image:
    """Integer greyscale wider than 8 bits (16-bit PNG/TIFF: mode ``I;16``, or ``I``) as an ``L`` image
    of its top 8 bits (value >> 8); PIL's own ``convert`` clips such values at 255, all but black
    turns white. ``I`` (signed 32-bit) holding values past 16 bits is scaled from its full positive
    range (>> 23); negatives are 0.
    Other modes are returned as they are."""
    if image.mode not in WIDE_GREY:
        return image
    values = np.asarray(image).astype(np.int64)
    shift = 8 if image.mode != "I" or values.size == 0 or values.max() <= 0xFFFF else 23
    return Image.fromarray((np.clip(values, 0, None) >> shift).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB image; transparent pixels are composited onto white (emoji, logos, PNG icons), and
    16-bit greyscale scaled to 8 bits (:func:`to_8bit`)."""
    image = to_8bit(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # convert() copies even when the mode already matches, so the result never shares a closed file
    return image.convert("RGB")


def to_resolution(image: Image.Image, resolution: int, center_crop: bool = True) -> Image.Image:
    """Convert to RGB (RGBA composited onto white), resize the shorter side to ``resolution``
    with BILINEAR, then crop a ``resolution`` square: centred, or top-left if ``center_crop`` is
    False.

    This mirrors diffusers' ``train_text_to_image`` (torchvision ``Resize`` + ``CenterCrop`` /
    ``RandomCrop``), without the randomness: a random crop is a training-time augmentation, and the
    real set must be the same pixels every time it is loaded.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    image = to_rgb(image)
    width, height = image.size
    if (width, height) != (resolution, resolution):
        # torchvision's Resize(int): the shorter side becomes `resolution`, the other is truncated
        if width <= height:
            size = (resolution, max(resolution, int(resolution * height / width)))
        else:
            size = (max(resolution, int(resolution * width / height)), resolution)
        if size != (width, height):
            image = image.resize(size, Image.Resampling.BILINEAR)
        width, height = image.size
        if center_crop:
            # torchvision CenterCrop rounds the offset the same way
            left = int(round((width - resolution) / 2.0))
            top = int(round((height - resolution) / 2.0))
        else:
            left = top = 0
        if (width, height) != (resolution, resolution):
            image = image.crop((left, top, left + resolution, top + resolution))
    return image
