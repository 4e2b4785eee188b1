"""The real pool of a chain: the source read once, split by the seed, written as image sets.

``<run>/real/heldout`` (evaluation only), ``real/train`` (generation 0's training set) and
``real/pool`` (the rest: fresh real data for later generations).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from chain_of_diffusion.config import ChainConfig
from chain_of_diffusion.data.imageset import save_png, save_vectors, vector_file_name, write_metadata
from chain_of_diffusion.data.sources import load_source
from chain_of_diffusion.data.split import split_note, split_sizes
from chain_of_diffusion.schema import image_channels
from chain_of_diffusion.seeding import generator

SPLITS = ("heldout", "train", "pool")


def prepare_real(cfg: ChainConfig, out_dir: Path) -> dict:
    """Read the source, shuffle with the seed, write the three splits into ``out_dir``.

    Returns a summary (sizes, skipped files) that is also written as ``out_dir/summary.json``.
    """
    data = load_source(cfg.data)
    n = len(data.examples)
    sizes = split_sizes(n, cfg.data.num_heldout, cfg.data.num_train)
    order = torch.randperm(n, generator=generator(cfg.seed, "real-split")).tolist()
    bounds = [0, sizes[0], sizes[0] + sizes[1], n]
    for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
        folder = out_dir / split
        folder.mkdir(parents=True, exist_ok=True)
        records = []
        chosen = [data.examples[i] for i in order[lo:hi]]
        vectors = bool(chosen) and chosen[0].vector is not None
        if vectors:  # a vector set: the points as rows of one file
            save_vectors(folder, torch.from_numpy(np.stack([e.vector for e in chosen])))
        for position, example in enumerate(chosen):
            name = vector_file_name(position) if vectors else f"{position:06d}.png"
            if not vectors:
                save_png(example.image, folder / name)
            record = {"file_name": name, "text": example.text, "source": "real", "generation": -1,
                      "index": position, "origin": example.origin}
            if example.label is not None:
                record["label"] = int(example.label)
            records.append(record)
        write_metadata(folder, records)
    summary = {
        "num_images": n,
        "heldout": sizes[0],
        "train": sizes[1],
        "pool": sizes[2],
        "num_skipped": data.num_skipped,
        "skipped": data.skipped,
        "class_names": data.class_names,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    # what was read and what auto chose, for the terminal (the chain prints a stage's note)
    note = [source_line(cfg, data), split_note(n, sizes, cfg.data.num_heldout, cfg.data.num_train)]
    return {**summary, "note": "\n".join(line for line in note if line)}


def source_line(cfg: ChainConfig, data) -> str:
    """One line on what the source gave: images (or points), distinct captions, skipped inputs with the
    first reason, and the sizes the images were resized from."""
    where = f"{cfg.data.source} {cfg.data.path}" if cfg.data.path else cfg.data.source
    n = len(data.examples)
    if data.examples and data.examples[0].vector is not None:
        return f"{where}: {n} points, {len({e.text for e in data.examples})} distinct captions"
    parts = [f"{n} images", f"{len({e.text for e in data.examples})} distinct captions"]
    parts.append(f"{data.num_skipped} skipped" + (f" (first: {data.skipped[0]})" if data.skipped else ""))
    if data.side_range:
        lo, hi = data.side_range
        sides = f"{lo} px" if lo == hi else f"{lo}-{hi} px"
        res = cfg.data.resolution
        parts.append(f"sides of {sides} kept at {res}x{res}" if lo == hi == res else f"sides of {sides} resized to {res}x{res}")
    if not cfg.model.pretrained:  # a pipeline renders its own channels (preflight.py checks a data.channels set by hand)
        channels = image_channels(cfg.data)
        parts.append(f"trained as {'grey (1 channel)' if channels == 1 else 'RGB'}"
                     + (" (data.channels=auto)" if cfg.data.channels == "auto" else ""))
    return f"{where}: " + ", ".join(parts)
