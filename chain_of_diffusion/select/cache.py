"""Features cached by image-file content: the one module of ``select/`` that touches files.

A cache is a safetensors file mapping the SHA-256 of an image file's bytes to its (D,) feature
vector, so an image is featurized once however often (and under whatever name) it comes back.
The caller names the file after everything else the features depend on (space, model, noise level).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from chain_of_diffusion.runs import atomic_replace


def file_digest(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached_features(
    paths: Sequence[str | Path],
    compute: Callable[[list[int]], Tensor],
    cache_file: str | Path,
) -> Tensor:
    """(N, D) features of the image files ``paths``, computing only those not in ``cache_file``.

    Args:
        paths: N image files.
        compute: positions (into ``paths``) -> (len(positions), D) features of those files; called
            at most once, with each distinct file content once.
        cache_file: the safetensors cache; created or extended (written atomically).

    Returns:
        (N, D) float32 on the CPU, in the order of ``paths``.
    """
    cache_file = Path(cache_file)
    digests = [file_digest(p) for p in paths]
    cache: dict[str, Tensor] = load_file(str(cache_file)) if cache_file.is_file() else {}
    first: dict[str, int] = {}
    for i, d in enumerate(digests):
        if d not in cache:
            first.setdefault(d, i)
    if first:
        todo = list(first.values())
        new = compute(todo)
        if new.shape[0] != len(todo):
            raise ValueError(f"compute returned {new.shape[0]} rows for {len(todo)} images")
        for d, row in zip(first, new.float().cpu()):
            cache[d] = row.contiguous()
        with atomic_replace(cache_file) as tmp:
            save_file(cache, str(tmp))
    if not digests:
        return torch.empty(0, 0)
    return torch.stack([cache[d] for d in digests])
