"""Image sets: a folder of PNG files plus ``metadata.jsonl``, i.e. a Hugging Face ``imagefolder``.

Each metadata record has ``file_name`` (relative to the folder holding ``metadata.jsonl``; it may
point into another folder with ``../``) and ``text`` (the caption), plus provenance such as
``seed``, ``source``, ``generation``, ``index``, ``label``.
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


def load_images(folder: str | Path, records: Sequence[dict], channels: int = 3) -> torch.Tensor:
    """The images of ``records`` (paths relative to ``folder``) as (N, C, H, W) in [-1, 1]."""
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
