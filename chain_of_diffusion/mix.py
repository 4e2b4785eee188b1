"""The mix stage: generation g's training set from the real pool and earlier selected samples.

Works on metadata records only (no pixels). Every record keeps its provenance: ``source``
(real / synthetic), ``generation`` it was made by (-1 for real), ``seed`` and the caption.
"""

from __future__ import annotations

from pathlib import Path

import torch

from chain_of_diffusion.config import ChainConfig
from chain_of_diffusion.data.imageset import read_metadata, relative_file_name
from chain_of_diffusion.errors import DataError
from chain_of_diffusion.runs import RunDir
from chain_of_diffusion.seeding import generator


def real_fraction_at(cfg: ChainConfig, generation: int) -> float:
    """The share of real images in generation ``generation``'s training set (1 at generation 0)."""
    if generation == 0:
        return 1.0
    f = cfg.mix.real_fraction
    schedule = cfg.mix.real_fraction_schedule
    if schedule == "linear_decay":
        span = max(1, cfg.generations - 1)
        return f * max(0.0, 1.0 - (generation - 1) / span)
    if schedule == "exponential_decay":
        return f * 0.5 ** (generation - 1)
    return f


def _records_of(folder: Path, into: Path) -> list[dict]:
    """Records of the image set in ``folder`` with ``file_name`` re-pointed from ``into``."""
    out = []
    for record in read_metadata(folder):
        record = dict(record)
        record["file_name"] = relative_file_name(folder / record["file_name"], into)
        out.append(record)
    return out


def _draw(records: list[dict], count: int, seed: int, *labels) -> list[dict]:
    if count >= len(records):
        return list(records)
    perm = torch.randperm(len(records), generator=generator(seed, *labels))[:count]
    return [records[i] for i in sorted(perm.tolist())]


def _unique(records: list[dict]) -> list[dict]:
    """The first record of each image file: a real image kept by a selection (select.method=latent
    pools real and synthetic candidates) is already in the pool as real data."""
    seen: set[str] = set()
    out = []
    for r in records:
        if r["file_name"] not in seen:
            seen.add(r["file_name"])
            out.append(r)
    return out


def build_training_set(cfg: ChainConfig, run: RunDir, generation: int, into: Path) -> tuple[list[dict], dict]:
    """(records for ``into/metadata.jsonl``, stats) of generation ``generation``."""
    real_train = _records_of(run.real / "train", into)
    if generation == 0:
        records = real_train
    else:
        size = cfg.mix.num_images or len(real_train)
        fraction = real_fraction_at(cfg, generation)
        num_real = round(fraction * size)
        previous = _records_of(run.stage_path(generation - 1, "selected"), into)
        policy = cfg.mix.policy
        # reflow: the couplings of g-1 (real_fraction is 0); ra_reflow: those and real images
        if policy in ("replace", "fresh", "reflow", "ra_reflow"):
            synthetic = _draw(previous, size - num_real, cfg.seed, "mix-synthetic", generation)
            if policy != "fresh":
                # real images the selection kept (select.method=latent) are already in: not twice
                taken = {r["file_name"] for r in synthetic}
                unused = [r for r in real_train if r["file_name"] not in taken]
                real = _draw(unused, num_real, cfg.seed, "mix-real", generation)
            else:
                real = _fresh_real(cfg, run, generation, num_real, size, into)
            records = real + synthetic
        else:
            pool = list(real_train)
            for g in range(generation):
                pool += _records_of(run.stage_path(g, "selected"), into)
            pool = _unique(pool)
            if policy == "accumulate":
                records = pool
            else:  # accumulate_subsample
                records = _draw(pool, size, cfg.seed, "mix-subsample", generation)
    num_real = sum(1 for r in records if r.get("source") == "real")
    stats = {
        "num_train_images": len(records),
        "num_real": num_real,
        "num_synthetic": len(records) - num_real,
        "real_share": num_real / max(1, len(records)),
    }
    return records, stats


def check_fresh_pool(cfg: ChainConfig, run: RunDir) -> None:
    """``mix.policy=fresh``: a :class:`DataError` before any training when the real pool cannot give
    every generation its share of unused real images (the count per generation is known up front)."""
    if cfg.mix.policy != "fresh":
        return
    size = cfg.mix.num_images or len(read_metadata(run.real / "train"))
    per_generation = [round(real_fraction_at(cfg, g) * size) for g in range(1, cfg.generations)]
    have = len(read_metadata(run.real / "pool"))
    if sum(per_generation) > have:
        raise DataError(
            f"mix.policy=fresh: generations 1-{cfg.generations - 1} need {sum(per_generation)} unused real images "
            f"({', '.join(map(str, per_generation))}) but the real pool has {have} (lower mix.real_fraction, "
            f"mix.num_images, data.num_train or generations)"
        )


def _fresh_real(cfg: ChainConfig, run: RunDir, generation: int, count: int, size: int, into: Path) -> list[dict]:
    """Real images never used before: generation g reads the pool after those of 1..g-1."""
    pool = _records_of(run.real / "pool", into)
    used = sum(round(real_fraction_at(cfg, g) * size) for g in range(1, generation))
    left = len(pool) - used
    if count > left:
        raise DataError(
            f"mix.policy=fresh: generation {generation} needs {count} unused real images but the "
            f"real pool has {max(0, left)} left (lower mix.real_fraction or data.num_train)"
        )
    return pool[used : used + count]
