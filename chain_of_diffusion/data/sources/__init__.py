"""Real captioned images for generation 0: one loader per ``data.source``, one file per source.

:data:`SOURCES` is the one list of source names: each maps to its loader as ``"module:function"``,
imported on first use, so importing this registry (as ``config.validate`` does) pulls in no
torch, PIL or numpy. A loader takes the ``DataConfig`` and returns a
:class:`~chain_of_diffusion.data.sources.common.SourceData` built with
:func:`~chain_of_diffusion.data.sources.common.collect`, which applies the rules every source
shares (``data.max_images``, ``data.on_error``, ``data.min_size``, the resize). Adding a source is
one new file here plus one line in :data:`SOURCES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chain_of_diffusion.errors import DataError

if TYPE_CHECKING:
    from chain_of_diffusion.config import DataConfig
    from chain_of_diffusion.data.sources.common import RealExample, SourceData

__all__ = ["SOURCES", "DataError", "RealExample", "SourceData", "load_source", "loader"]

SOURCES: dict[str, str] = {
    "digits": "chain_of_diffusion.data.sources.digits:load",
    "digits_bold": "chain_of_diffusion.data.sources.digits_bold:load",
    "imagefolder": "chain_of_diffusion.data.sources.imagefolder:load",
    "csv": "chain_of_diffusion.data.sources.csv:load",
    "hf": "chain_of_diffusion.data.sources.hf:load",
    "emoji": "chain_of_diffusion.data.sources.emoji:load",
    "fashion_mnist": "chain_of_diffusion.data.sources.fashion_mnist:load",
    "gaussian": "chain_of_diffusion.data.sources.gaussian:load",
    "gmm": "chain_of_diffusion.data.sources.gmm:load",
}


def loader(name: str) -> Callable[[DataConfig], SourceData]:
    """The loader of source ``name`` (imports its module)."""
    if name not in SOURCES:
        raise DataError(f"data.source: unknown source {name!r}; known: {', '.join(SOURCES)}")
    module, _, function = SOURCES[name].partition(":")
    return getattr(importlib.import_module(module), function)


def load_source(cfg: DataConfig) -> SourceData:
    """The real examples of ``cfg.source``: at most ``cfg.max_images``, the first in the source's
    natural order, each an RGB ``cfg.resolution`` square. Raises :class:`DataError` when nothing
    usable is found."""
    data = loader(cfg.source)(cfg)
    if not data.examples:
        where = cfg.path or f"data.source={cfg.source}"
        detail = f" ({data.num_skipped} skipped; first: {data.skipped[0]})" if data.skipped else ""
        raise DataError(f"{where}: no images found{detail}")
    return data


# names this module has always offered, now defined in a source's own file: imported on first use
_MOVED = {
    "RealExample": "common", "SourceData": "common", "IMAGE_EXTENSIONS": "common", "SKIP_HINT": "common",
    "NUMBER_WORDS": "digits", "EMOJI_FONT_PATHS": "emoji", "EMOJI_FONT_SIZE": "emoji",
    "FASHION_MNIST_DIR": "fashion_mnist", "FASHION_MNIST_CLASSES": "fashion_mnist",
    "FASHION_MNIST_CAPTIONS": "fashion_mnist",
    "load_digits_source": "digits:load", "load_imagefolder_source": "imagefolder:load",
    "load_csv_source": "csv:load", "load_hf_source": "hf:load", "load_emoji_source": "emoji:load",
    "load_fashion_mnist_source": "fashion_mnist:load",
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attr = _MOVED[name].partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr or name)
