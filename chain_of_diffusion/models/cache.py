"""Encodings (VAE latents, text-encoder outputs) cached on disk, keyed by the content they encode.

The chain trains every generation on image sets that overlap (real images under ``accumulate``,
the same captions every generation), so encodings are keyed by a hash of the PNG bytes or the
caption text rather than by file name: a generation re-uses whatever an earlier one encoded. The
cache is a folder of safetensors shards, each written once through a temporary file, so a kill
leaves only complete shards. Keys are valid only for one encoder, which is why the cache lives in
a run directory (one base model per run).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from chain_of_diffusion.runs import atomic_replace


def file_key(path: str | Path, variant: str = "") -> str:
    """The cache key of an image file: SHA-256 of its bytes, plus a variant tag (``flip``)."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return f"img-{digest}{'-' + variant if variant else ''}"


def text_key(text: str) -> str:
    return "txt-" + hashlib.sha256(text.encode("utf-8")).hexdigest()


class EncodingCache:
    """Tensors by key in ``folder``; :meth:`fill` encodes what is missing, :meth:`load` reads."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _index(self) -> dict[str, Path]:
        index: dict[str, Path] = {}
        if not self.folder.is_dir():
            return index
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            with safe_open(str(shard), "pt") as f:
                for key in f.keys():
                    index[key] = shard
        return index

    def missing(self, keys: Sequence[str]) -> list[int]:
        """Positions in ``keys`` with no cached tensor."""
        index = self._index()
        return [i for i, k in enumerate(keys) if k not in index]

    def fill(self, keys: Sequence[str], encode: Callable[[list[int]], torch.Tensor]) -> int:
        """Encode the missing ``keys`` (``encode(positions) -> (len(positions), ...)``) into one new
        shard; returns how many were encoded. Duplicate keys are encoded once."""
        todo: dict[str, int] = {}
        for i in self.missing(keys):
            todo.setdefault(keys[i], i)
        if not todo:
            return 0
        encoded = encode(list(todo.values()))
        tensors = {k: encoded[j].detach().float().cpu().contiguous() for j, k in enumerate(todo)}
        self.folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("\n".join(sorted(tensors)).encode()).hexdigest()[:16]
        path = self.folder / f"shard-{name}.safetensors"
        with atomic_replace(path) as tmp:
            save_file(tensors, str(tmp))
        return len(tensors)

    def load(self, keys: Sequence[str]) -> torch.Tensor:
        """(len(keys), ...) stacked in key order; every key must be cached."""
        index = self._index()
        absent = [k for k in keys if k not in index]
        if absent:
            raise KeyError(f"{self.folder}: {len(absent)} encodings missing (first {absent[0]})")
        by_shard: dict[Path, list[str]] = {}
        for k in dict.fromkeys(keys):
            by_shard.setdefault(index[k], []).append(k)
        found: dict[str, torch.Tensor] = {}
        for shard, shard_keys in by_shard.items():
            with safe_open(str(shard), "pt") as f:
                for k in shard_keys:
                    found[k] = f.get_tensor(k)
        return torch.stack([found[k] for k in keys]) if keys else torch.empty(0)
