"""Seeds derived from (root seed, generation, stage, index) by a stable hash.

A derived seed depends only on its parts, never on process count, batch size or call order, so
one image can be regenerated alone and a resumed run draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(root: int, *parts: object) -> int:
    """A 63-bit seed from the root seed and any labels, e.g. ``derive_seed(0, 'sample', 3, 17)``."""
    text = "/".join([str(int(root))] + [str(p) for p in parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(root: int, *parts: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(root, *parts))
