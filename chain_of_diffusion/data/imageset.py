"""Image sets: a folder of PNG files plus ``metadata.jsonl``, i.e. a Hugging Face ``imagefolder``.

Each metadata record has ``file_name`` (relative to the folder holding ``metadata.jsonl``; it may
point into another folder with ``../``) and ``text`` (the caption), plus provenance such as
``seed``, ``source``, ``generation``, ``index``, ``label``.

A *vector set* (data.source gaussian, gmm) is the same with its points as the rows of one
``vectors.safetensors`` beside ``metadata.jsonl``: a record's ``file_name`` is
``vectors.safetensors#<row>``, so records still name one example each and point across folders
alike, and :func:`load_images` returns (N, d) points instead of (N, C, H, W) pixels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from chain_of_diffusion.errors import ImageSetError

METADATA = "metadata.jsonl"
VECTORS = "vectors.safetensors"  # a vector set's points, one row per record



def write_metadata(folder: str | Path, records: Iterable[dict]) -> Path:
    """Write ``metadata.jsonl`` atomically (temp file + rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / METADATA
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_metadata(folder: str | Path) -> list[dict]:
    path = Path(folder) / METADATA
    if not path.is_file():
        raise ImageSetError(f"{path}: no metadata.jsonl (not an image set)")
    records = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ImageSetError(f"{path}:{line_no}: not valid JSON") from None
            if "file_name" not in record:
                raise ImageSetError(f"{path}:{line_no}: record has no 'file_name'")
            records.append(record)
    return records


def caption_labels(records: Iterable[dict]) -> dict[str, int]:
    """caption -> class label, from records with a ``label`` (the most common one where a caption has several)."""
    from collections import Counter

    counts: dict[str, Counter] = {}
    for r in records:
        if r.get("label") is not None:
            counts.setdefault(r["text"], Counter())[int(r["label"])] += 1
    return {text: c.most_common(1)[0][0] for text, c in counts.items()}


def image_path(folder: str | Path, record: dict) -> Path:
    return Path(folder) / record["file_name"]


def save_png(image: Image.Image, path: str | Path) -> None:
    """PNG written to a temp name and renamed, so a killed process never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(N, C, H, W) floats in [-1, 1] -> PIL images (RGB for C=3, L for C=1)."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).numpy()
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in arr]
    return [Image.fromarray(a, mode="RGB") for a in arr]


def pil_to_tensor(images: Sequence[Image.Image], channels: int = 3) -> torch.Tensor:
    """PIL images of one size -> (N, C, H, W) float32 in [-1, 1]."""
    mode = "RGB" if channels == 3 else "L"
    arr = np.stack([np.asarray(im.convert(mode), dtype=np.float32) for im in images])
    if arr.ndim == 3:
        arr = arr[..., None]
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous() / 127.5 - 1.0


def vector_file_name(row: int) -> str:
    return f"{VECTORS}#{row}"


def save_vectors(folder: str | Path, points: torch.Tensor) -> None:
    """A vector set's points (N, d), written to a temp name and renamed."""
    from safetensors.torch import save_file

    path = Path(folder) / VECTORS
    tmp = path.with_name(path.name + ".tmp")
    save_file({"vectors": points.float().contiguous()}, str(tmp))
    os.replace(tmp, path)


def _vector_row(path: Path) -> tuple[Path, int] | None:
    """(file, row) where ``path`` names a row of a vector set, else None."""
    name, sep, row = path.name.partition("#")
    if sep and name.endswith(".safetensors") and row.isdigit():
        return path.with_name(name), int(row)
    return None


def _load_vectors(rows: list[tuple[Path, int]]) -> torch.Tensor:
    from safetensors.torch import load_file

    files: dict[Path, torch.Tensor] = {}
    out = []
    for path, row in rows:
        if path not in files:
            try:
                files[path] = load_file(str(path))["vectors"]
            except (OSError, KeyError, ValueError) as err:  # safetensors raises its own error for bad headers
                raise ImageSetError(f"{path}: cannot read vectors ({err})") from None
        if row >= files[path].shape[0]:
            raise ImageSetError(f"{path}: no row {row} (it has {files[path].shape[0]})")
        out.append(files[path][row])
    return torch.stack(out).float()


def load_images(folder: str | Path, records: Sequence[dict], channels: int = 3) -> torch.Tensor:
    """The images of ``records`` (paths relative to ``folder``) as (N, C, H, W) in [-1, 1]; for a
    vector set, its points (N, d)."""
    rows = [_vector_row(image_path(folder, r)) for r in records]
    if rows and all(rows):
        return _load_vectors(rows)
    images = []
    for record in records:
        path = image_path(folder, record)
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB" if channels == 3 else "L"))
        except (OSError, ValueError) as err:
            raise ImageSetError(f"{path}: cannot read image ({err})") from None
    if not images:
        return torch.empty(0, channels, 0, 0)
    return pil_to_tensor(images, channels)


def relative_file_name(target: str | Path, metadata_folder: str | Path) -> str:
    """``file_name`` for a record in ``metadata_folder`` that points at ``target``."""
    return Path(os.path.relpath(Path(target).resolve(), Path(metadata_folder).resolve())).as_posix()
