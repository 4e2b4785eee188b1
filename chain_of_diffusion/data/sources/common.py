"""What several sources share: the example types, the candidate rules, labels and image files.

Every loader lists its candidates (origin, a way to decode the image, caption, label) in the
source's natural order and hands them to :func:`collect`, which applies the shared rules:

* ``data.max_images`` caps the images read; candidates are decoded one by one and decoding stops
  as soon as the cap is reached, so a cap keeps a large source cheap.
* an image that cannot be decoded, or has no caption, raises :class:`DataError` under
  ``data.on_error=error`` and is counted in ``SourceData.skipped`` under ``data.on_error=skip``.
* every image goes through :func:`~chain_of_diffusion.data.transforms.to_resolution`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from PIL import Image

from chain_of_diffusion.data.transforms import to_resolution
from chain_of_diffusion.errors import DataError

if TYPE_CHECKING:
    from chain_of_diffusion.config import DataConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
SKIP_HINT = "set data.on_error=skip to skip such files"

log = logging.getLogger("chain_of_diffusion.data.sources")


@dataclass
class RealExample:
    image: Optional[Image.Image]  # RGB, data.resolution square (None for a point)
    text: str  # caption
    label: Optional[int]  # class label where the source has one
    origin: str  # file path, or "<source>:<index>"
    vector: Optional[np.ndarray] = None  # (d,) float32: a vector source's point instead of an image


@dataclass
class SourceData:
    examples: list[RealExample]
    num_skipped: int = 0  # inputs skipped under data.on_error=skip
    skipped: list[str] = field(default_factory=list)  # "<origin>: <reason>" for each of them
    class_names: Optional[list[str]] = None
    upscaled: list[str] = field(default_factory=list)  # origins of images smaller than data.resolution
    # (smallest, largest) side over the kept images as the source had them, before the resize
    side_range: Optional[tuple[int, int]] = None


@dataclass
class Candidate:
    origin: str
    decode: Callable[[], Image.Image]  # may raise anything; the image may be any size and mode
    text: Optional[str]
    label: Optional[int] = None
    missing_caption: str = "no caption"  # the reason given when text is empty


def collect(
    candidates: Iterable[Candidate],
    cfg: DataConfig,
    class_names: Optional[list[str]] = None,
    bad_inputs: Iterable[str] = (),
) -> SourceData:
    """Decode candidates in order until ``cfg.max_images`` examples are kept, applying on_error.

    ``bad_inputs`` are "<origin>: <reason>" lines for inputs the loader already knows it cannot
    use (whatever the cap); they go through the same on_error rule, before any decoding.
    """
    data = SourceData(examples=[], class_names=class_names)
    limit = cfg.max_images

    def bad(message: str) -> None:
        if cfg.on_error != "skip":
            raise DataError(f"{message}; {SKIP_HINT}")
        data.num_skipped += 1
        data.skipped.append(message)

    for message in bad_inputs:
        bad(message)
    for cand in candidates:
        if limit is not None and len(data.examples) >= limit:
            break
        text = cand.text.strip() if isinstance(cand.text, str) else None
        if not text:
            bad(f"{cand.origin}: {cand.missing_caption}")
            continue
        try:
            decoded = cand.decode()
            image = to_resolution(decoded, cfg.resolution, cfg.center_crop)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
            bad(f"{cand.origin}: cannot decode image ({one_line(err)})")
            continue
        short_side = min(decoded.size)
        if cfg.min_size is not None and short_side < cfg.min_size:
            bad(f"{cand.origin}: {decoded.size[0]}x{decoded.size[1]} is smaller than data.min_size={cfg.min_size}")
            continue
        if short_side < cfg.resolution:
            data.upscaled.append(cand.origin)
        lo, hi = data.side_range or (short_side, max(decoded.size))
        data.side_range = (min(lo, short_side), max(hi, *decoded.size))
        data.examples.append(RealExample(image=image, text=text, label=cand.label, origin=cand.origin))
    if data.upscaled:
        log.warning(
            "%d images are smaller than data.resolution=%d and were upscaled (first: %s); set data.min_size "
            "to refuse or skip them", len(data.upscaled), cfg.resolution, data.upscaled[0],
        )
    return data


def one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def read_image_file(path: Path) -> Image.Image:
    """Open and fully decode, inside the caller's try, so truncated files fail here."""
    with Image.open(path) as im:
        im.load()
        return im.copy()  # closing the file invalidates `im` itself


def existing_path(cfg: DataConfig, kind: str) -> Path:
    """``data.path`` as an existing folder (kind "folder") or file (kind "file")."""
    if not cfg.path:
        raise DataError(f"data.path: required for data.source={cfg.source}")
    path = Path(cfg.path).expanduser()
    if kind == "folder" and not path.is_dir():
        raise DataError(f"data.path: folder does not exist: {path}")
    if kind == "file" and not path.is_file():
        raise DataError(f"data.path: file does not exist: {path}")
    return path


def check_columns(where: str, columns: list[str], cfg: DataConfig) -> None:
    """A DataError naming the missing column and its config key, where a table (CSV, dataset) lacks
    data.image_column, data.caption_column or a set data.label_column."""
    wanted = [("data.image_column", cfg.image_column), ("data.caption_column", cfg.caption_column)]
    if cfg.label_column:
        wanted.append(("data.label_column", cfg.label_column))
    for key, name in wanted:
        if name not in columns:
            raise DataError(f"{where}: no column '{name}' ({key}); columns present: {', '.join(columns) or '(none)'}")


def label_mapping(
    values: list[Any], key: str, where: str
) -> tuple[list[Optional[int]], Optional[list[str]]]:
    """Integer labels as they are; other labels become indices into their sorted unique names."""
    present = [v for v in values if v is not None and v != ""]
    if not present:
        return [None] * len(values), None

    def as_int(v: Any) -> Optional[int]:
        if isinstance(v, bool):
            return None
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return int(v.strip())
        return None

    if all(as_int(v) is not None for v in present):
        return [as_int(v) if v is not None and v != "" else None for v in values], None
    if not all(isinstance(v, str) for v in present):
        kinds = sorted({type(v).__name__ for v in present})
        raise DataError(
            f"{where}: label column '{key}' (data.label_column) holds {', '.join(kinds)} values; "
            "expected integers or strings"
        )
    names = sorted(set(present))
    index = {name: i for i, name in enumerate(names)}
    return [index[v] if v in index else None for v in values], names
