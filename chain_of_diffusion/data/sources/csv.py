"""``csv``: a CSV with an image path column and a caption column."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from PIL import Image

from chain_of_diffusion.data.sources.common import (
    Candidate,
    SourceData,
    check_columns,
    collect,
    existing_path,
    label_mapping,
    read_image_file,
)

if TYPE_CHECKING:
    from chain_of_diffusion.config import DataConfig


def load(cfg: DataConfig) -> SourceData:
    """A CSV with an image path column (relative to the CSV's folder, or absolute) and a caption
    column."""
    path = existing_path(cfg, "file")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    check_columns(str(path), columns, cfg)
    labels: list[Optional[int]] = [None] * len(rows)
    class_names = None
    if cfg.label_column:
        labels, class_names = label_mapping(
            [row.get(cfg.label_column) for row in rows], cfg.label_column, str(path)
        )

    def candidates() -> Iterator[Candidate]:
        for line_no, (row, label) in enumerate(zip(rows, labels), 2):
            ref = (row.get(cfg.image_column) or "").strip()
            if not ref:
                yield Candidate(
                    origin=f"{path}:{line_no}",
                    decode=lambda: _raise(ValueError(f"empty '{cfg.image_column}'")),
                    text=row.get(cfg.caption_column),
                    label=label,
                )
                continue
            image = Path(ref).expanduser()
            image = image if image.is_absolute() else path.parent / image
            yield Candidate(
                origin=str(image),
                decode=lambda p=image: read_image_file(p),
                text=row.get(cfg.caption_column),
                label=label,
                missing_caption=f"no caption (empty '{cfg.caption_column}' in {path.name} line {line_no})",
            )

    return collect(candidates(), cfg, class_names)


def _raise(err: Exception) -> Image.Image:
    raise err
