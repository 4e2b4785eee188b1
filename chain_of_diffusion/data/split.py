"""How many real images are held out and trained on: ``data.num_heldout`` / ``data.num_train``,
``auto`` (the default) sized from the source (no torch, no I/O).

``auto`` keeps the fixed sizes for a large source (500 held out, 500 trained on, as the quickstart's
digits have always been split) and fits a small one: a share held out (20%, at least 8) and the
rest trained on, so a folder of 40 images runs with the default settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from chain_of_diffusion.errors import DataError

if TYPE_CHECKING:
    from chain_of_diffusion.config import DataConfig

AUTO = "auto"
LARGE_SOURCE = 1000  # a source of at least this many usable images keeps the fixed sizes:
FIXED_SIZE = 500  # held out, and trained on, each
HELDOUT_SHARE = 5  # a smaller source: 1 image in 5 (20%, rounded down) held out ...
MIN_HELDOUT = 8  # ... but at least this many; the rest trained on


def auto_heldout(num_images: int) -> int:
    """``data.num_heldout=auto`` for a source of ``num_images`` usable images."""
    return FIXED_SIZE if num_images >= LARGE_SOURCE else max(MIN_HELDOUT, num_images // HELDOUT_SHARE)


def auto_train(num_images: int, heldout: int) -> int:
    """``data.num_train=auto``: the images not held out, at most 500 for a large source."""
    rest = num_images - heldout
    return min(FIXED_SIZE, rest) if num_images >= LARGE_SOURCE else rest


def split_sizes(num_images: int, num_heldout, num_train) -> tuple[int, int, int]:
    """(heldout, train, pool) sizes for the configured values (a number, ``auto``, or for
    ``num_train`` None: every image not held out); raises DataError when the source is too small."""
    heldout = auto_heldout(num_images) if num_heldout == AUTO else num_heldout
    if num_images < heldout + 1:
        asked = f"auto (at least {MIN_HELDOUT})" if num_heldout == AUTO else str(heldout)
        raise DataError(
            f"the data source has {num_images} usable images; data.num_heldout={asked} "
            "leaves none to train on (lower data.num_heldout)"
        )
    if num_train == AUTO:
        train = auto_train(num_images, heldout)
    else:
        train = num_images - heldout if num_train is None else num_train
    if heldout + train > num_images:
        raise DataError(
            f"the data source has {num_images} usable images, fewer than data.num_heldout="
            f"{heldout}{' (auto)' if num_heldout == AUTO else ''} + data.num_train={num_train}"
        )
    return heldout, train, num_images - heldout - train


def split_note(num_images: int, sizes: tuple[int, int, int], num_heldout, num_train) -> Optional[str]:
    """One line saying what ``auto`` chose (None where both sizes were given)."""
    if AUTO not in (num_heldout, num_train):
        return None
    large = num_images >= LARGE_SOURCE
    why_heldout = (f"auto: {FIXED_SIZE} for {LARGE_SOURCE}+ images" if large
                   else f"auto: {100 // HELDOUT_SHARE}%, at least {MIN_HELDOUT}")
    why_train = f"auto: at most {FIXED_SIZE} for {LARGE_SOURCE}+ images" if large else "auto: the rest"
    heldout = f"{sizes[0]} held out for evaluation" + (f" (data.num_heldout={why_heldout})" if num_heldout == AUTO else "")
    train = f"{sizes[1]} trained on" + (f" (data.num_train={why_train})" if num_train == AUTO else "")
    return f"{num_images} usable images: {heldout}, {train}"


def points_to_draw(cfg: DataConfig) -> int:
    """How many points a vector source draws: data.max_images, else held-out + training (``auto``:
    500 each, which the split then keeps)."""
    heldout = FIXED_SIZE if cfg.num_heldout == AUTO else cfg.num_heldout
    train = FIXED_SIZE if cfg.num_train == AUTO else cfg.num_train
    return cfg.max_images or heldout + train
