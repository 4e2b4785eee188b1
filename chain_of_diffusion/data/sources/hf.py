"""``hf``: a Hugging Face ``datasets`` dataset, saved, local, or already in the local cache."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from PIL import Image

from chain_of_diffusion.data.sources.common import (
    Candidate,
    SourceData,
    check_columns,
    collect,
    label_mapping,
    one_line,
    read_image_file,
)
from chain_of_diffusion.errors import DataError

if TYPE_CHECKING:
    from chain_of_diffusion.config import DataConfig

_HF_FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _open_hf_dataset(cfg: DataConfig):
    """The split as a ``datasets.Dataset``; any failure becomes one DataError line."""
    import datasets

    if not cfg.path:
        raise DataError("data.path: required for data.source=hf")
    local = Path(cfg.path).expanduser()
    saved = local.is_dir() and any(
        (local / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")
    )
    try:
        if saved:
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if cfg.split not in ds:
                    raise DataError(
                        f"data.split: {cfg.split!r} is not a split of {local}; splits: {', '.join(ds)}"
                    )
                ds = ds[cfg.split]
        elif local.is_file() and local.suffix.lower() in _HF_FILE_BUILDERS:
            builder = _HF_FILE_BUILDERS[local.suffix.lower()]
            ds = datasets.load_dataset(builder, data_files={cfg.split: str(local)}, split=cfg.split)
        else:
            ds = datasets.load_dataset(str(local) if local.exists() else cfg.path, split=cfg.split)
    except DataError:
        raise
    except Exception as err:  # datasets raises many types: not found, offline, bad split, bad files
        raise DataError(
            f"data.path: {cfg.path}: dataset split {cfg.split!r} is not available offline "
            f"(not in the local Hugging Face cache, nor a local dataset folder): {one_line(err)}"
        ) from None
    return ds


def _decode_hf_image(value: Any, base: Optional[Path]) -> Image.Image:
    """A row's image, whatever form the column holds: undecoded {bytes, path}, a path, or PIL."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            with Image.open(io.BytesIO(value["bytes"])) as im:
                im.load()
                return im.copy()
        if value.get("path"):
            return read_image_file(Path(value["path"]))
    if isinstance(value, str):
        path = Path(value)
        if not path.is_absolute() and base is not None:
            path = base / path
        return read_image_file(path)
    raise ValueError(f"unsupported image value of type {type(value).__name__}")


def load(cfg: DataConfig) -> SourceData:
    """A ``datasets`` dataset: a saved dataset folder (``save_to_disk``), a local data folder, or a
    Hub name already in the local cache; columns from data.image_column / caption_column /
    label_column."""
    import datasets

    ds = _open_hf_dataset(cfg)
    columns = list(ds.column_names)
    check_columns(str(cfg.path), columns, cfg)
    wanted = [cfg.image_column, cfg.caption_column]
    labels: list[Optional[int]] = [None] * len(ds)
    class_names = None
    if cfg.label_column:
        feature = ds.features[cfg.label_column]
        values = ds[cfg.label_column]
        if isinstance(feature, datasets.ClassLabel):
            labels, class_names = [None if v is None else int(v) for v in values], list(feature.names)
        else:
            labels, class_names = label_mapping(values, cfg.label_column, str(cfg.path))
    # decode ourselves, row by row, so one broken image is one skipped row and a cap stays cheap
    if isinstance(ds.features[cfg.image_column], datasets.Image):
        ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))
    ds = ds.select_columns(wanted)
    # image paths stored as strings are relative to the dataset folder or file, like csv's
    local = Path(cfg.path).expanduser()
    base = local if local.is_dir() else local.parent if local.is_file() else None

    def candidates() -> Iterator[Candidate]:
        for i, (row, label) in enumerate(zip(ds, labels)):
            value = row[cfg.image_column]
            file = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
            origin = str(file) if file else f"hf:{cfg.path}:{cfg.split}:{i}"
            yield Candidate(
                origin=origin,
                decode=lambda v=value: _decode_hf_image(v, base),
                text=row[cfg.caption_column],
                label=label,
                missing_caption=f"no caption (empty '{cfg.caption_column}' in row {i})",
            )

    return collect(candidates(), cfg, class_names)
