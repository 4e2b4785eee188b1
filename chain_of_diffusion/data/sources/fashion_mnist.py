"""``fashion_mnist``: Fashion-MNIST from the Debian package ``dataset-fashion-mnist``, a folder of
idx files, or torchvision's download."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from PIL import Image

from chain_of_diffusion.data.sources.common import Candidate, SourceData, collect, one_line
from chain_of_diffusion.errors import DataError

if TYPE_CHECKING:
    from chain_of_diffusion.config import DataConfig

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_CAPTIONS = [
    f"a grayscale photo of {noun}"
    for noun in (
        "a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat",
        "a sandal", "a shirt", "a sneaker", "a bag", "an ankle boot",
    )
]  # fmt: skip
_FASHION_MNIST_SPLITS = ("train", "t10k")


def _idx_files(folder: Path) -> Optional[dict[str, tuple[Path, Path]]]:
    """split -> (images, labels) paths, gzipped or not, if all four files are in ``folder``."""
    found = {}
    for split in _FASHION_MNIST_SPLITS:
        pair = []
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            options = [folder / f"{split}-{kind}.gz", folder / f"{split}-{kind}"]
            hit = next((p for p in options if p.is_file()), None)
            if hit is None:
                return None
            pair.append(hit)
        found[split] = (pair[0], pair[1])
    return found


def _read_idx(path: Path, limit: Optional[int] = None) -> np.ndarray:
    """An idx array (big-endian header: zero, zero, dtype code, ndim, then the dims), first ``limit``
    items only."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        header = f.read(4)
        if len(header) != 4 or header[:2] != b"\x00\x00" or header[2] != 0x08:
            raise DataError(f"{path}: not an unsigned-byte idx file")
        ndim = header[3]
        dims = [int.from_bytes(f.read(4), "big") for _ in range(ndim)]
        count = dims[0] if limit is None else min(dims[0], limit)
        item = int(np.prod(dims[1:])) if ndim > 1 else 1
        raw = f.read(count * item)
    if len(raw) != count * item:
        raise DataError(f"{path}: truncated idx file ({len(raw)} of {count * item} bytes)")
    return np.frombuffer(raw, dtype=np.uint8).reshape([count, *dims[1:]])


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "chain_of_diffusion"


def _download_fashion_mnist(root: Path) -> Path:
    """torchvision's copy of the same idx files; raises when there is no network."""
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(root=str(root), train=train, download=True)
    return root / "FashionMNIST" / "raw"


def load(cfg: DataConfig) -> SourceData:
    """Fashion-MNIST, 60k train then 10k test images (28x28 grey), from the Debian package
    ``dataset-fashion-mnist`` (or ``data.path``, a folder with the idx files), else torchvision's
    download."""
    folder = Path(cfg.path).expanduser() if cfg.path else FASHION_MNIST_DIR
    files = _idx_files(folder)
    if files is None:
        root = _cache_dir() / "fashion_mnist"
        try:
            files = _idx_files(_download_fashion_mnist(root))
        except Exception as err:
            raise DataError(
                f"data.source=fashion_mnist: no idx files in {folder} and the torchvision download "
                f"failed ({one_line(err)}); apt-get install dataset-fashion-mnist"
            ) from None
        if files is None:
            raise DataError(
                f"{root}: the torchvision download left no idx files; apt-get install dataset-fashion-mnist"
            )

    # only the needed prefix of each file is decompressed; undecodable pixels cannot occur in idx,
    # so the cap can be exact
    remaining = cfg.max_images
    arrays = []
    for split in _FASHION_MNIST_SPLITS:
        if remaining is not None and remaining <= 0:
            break
        images_path, labels_path = files[split]
        images, labels = _read_idx(images_path, remaining), _read_idx(labels_path, remaining)
        if len(images) != len(labels):
            raise DataError(
                f"{images_path}: {len(images)} images but {len(labels)} labels in {labels_path.name}"
            )
        arrays.append((split, images, labels))
        if remaining is not None:
            remaining -= len(images)

    def candidates() -> Iterator[Candidate]:
        for split, images, labels in arrays:
            for i in range(len(images)):
                label = int(labels[i])
                yield Candidate(
                    origin=f"fashion_mnist:{split}:{i}",
                    decode=lambda a=images[i]: Image.fromarray(a, mode="L"),
                    text=FASHION_MNIST_CAPTIONS[label],
                    label=label,
                )

    return collect(candidates(), cfg, class_names=list(FASHION_MNIST_CLASSES))
