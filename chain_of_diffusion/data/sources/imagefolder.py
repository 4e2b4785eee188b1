"""``imagefolder``: a folder with ``metadata.jsonl``, or image files with ``.txt`` captions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from chain_of_diffusion.data.imageset import METADATA, read_metadata
from chain_of_diffusion.data.sources.common import (
    IMAGE_EXTENSIONS,
    Candidate,
    SourceData,
    collect,
    existing_path,
    label_mapping,
    read_image_file,
)
from chain_of_diffusion.errors import DataError, ImageSetError

if TYPE_CHECKING:
    from chain_of_diffusion.config import DataConfig


def _caption_of(record: dict, key: str) -> Optional[str]:
    value = record.get(key)
    return value if isinstance(value, str) else None


def _image_files(folder: Path) -> list[Path]:
    """The image files under ``folder``, recursive, sorted by relative path."""
    return sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


def _is_hidden(path: Path, folder: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def load(cfg: DataConfig) -> SourceData:
    """A folder with ``metadata.jsonl`` (``file_name`` + caption column), or image files each
    with a same-named ``.txt`` caption next to it (sorted, recursive).

    With ``metadata.jsonl``, an image file under the folder that no record names (hidden files
    and folders aside) is a bad input under ``data.on_error``, not silently left out."""
    folder = existing_path(cfg, "folder")
    if (folder / METADATA).is_file():
        try:
            records = read_metadata(folder)
        except ImageSetError as err:
            raise DataError(str(err)) from None
        labels: list[Optional[int]] = [None] * len(records)
        class_names = None
        if cfg.label_column:
            labels, class_names = label_mapping(
                [r.get(cfg.label_column) for r in records], cfg.label_column, str(folder / METADATA)
            )
        recorded = {os.path.abspath(folder / r["file_name"]) for r in records if isinstance(r["file_name"], str)}
        unrecorded = [
            f"{p}: no record in {folder / METADATA}"
            for p in _image_files(folder)
            if not _is_hidden(p, folder) and os.path.abspath(p) not in recorded
        ]
        cands = (
            Candidate(
                origin=str(folder / r["file_name"]),
                decode=lambda p=folder / r["file_name"]: read_image_file(p),
                text=_caption_of(r, cfg.caption_column),
                label=label,
                missing_caption=f"no caption (no '{cfg.caption_column}' in its {METADATA} record)",
            )
            for r, label in zip(records, labels)
        )
        data = collect(cands, cfg, class_names, bad_inputs=unrecorded)
    else:
        files = _image_files(folder)
        if not files:
            raise DataError(
                f"{folder}: no images found (looked for {METADATA}, or {', '.join(IMAGE_EXTENSIONS)} "
                "files with .txt captions)"
            )

        def txt_caption(path: Path) -> Optional[str]:
            txt = path.with_suffix(".txt")
            return txt.read_text(encoding="utf-8") if txt.is_file() else None

        cands = (
            Candidate(
                origin=str(p),
                decode=lambda p=p: read_image_file(p),
                text=txt_caption(p),
                missing_caption=f"no caption (missing or empty {p.with_suffix('.txt').name})",
            )
            for p in files
        )
        data = collect(cands, cfg)
    return data
