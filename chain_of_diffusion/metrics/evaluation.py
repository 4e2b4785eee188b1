"""Files -> metrics: evaluate one generation of a run, or any two image folders.

The reference (held-out real) features of the pretrained feature spaces are cached in the run's
``reference/`` folder on first use (``features_<space>.safetensors``), so every generation and
every re-evaluation with ``scripts/evaluate.py`` pays for them once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor

from chain_of_diffusion.data.imageset import ImageSetError, load_images, read_metadata

from .drift import DRIFT_NAMES
from .suite import DRIFT_METRICS, FeatureSpaces, MetricInputError, check_names, compute_metrics

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# computed inline by the evaluate stage (sharded over processes); the rest go through compute_metrics
STAGE_INLINE = ("fd_classifier", "memorization", "generalization", "entropy")


# ---- a run's generation ----------------------------------------------------------------------
def _cache_name(cfg, space: str) -> str:
    if space == "clip":  # the embedding depends on the model and its weights
        tag = f"{cfg.metrics.clip_model}_{Path(str(cfg.metrics.clip_pretrained)).name}"
        return "features_clip_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", tag) + ".safetensors"
    return f"features_{space}.safetensors"


def reference_features(cfg, run, spaces: FeatureSpaces):
    """space -> (M, D) held-out features; cached in ``reference/`` (written atomically)."""
    memo: dict[str, Tensor] = {}

    def get(space: str) -> Tensor:
        if space in memo:
            return memo[space]
        if space == cfg.metrics.features and space in ("classifier", "pixels"):
            memo[space] = load_file(str(run.reference / "heldout_features.safetensors"))["features"]
            return memo[space]
        path = run.reference / _cache_name(cfg, space)
        if path.exists():
            memo[space] = load_file(str(path))["features"]
            return memo[space]
        heldout = load_images(run.real / "heldout", read_metadata(run.real / "heldout"))
        memo[space] = spaces(space, heldout).contiguous()
        if space in ("inception", "clip"):  # the pixel/classifier spaces are cheap to recompute
            tmp = path.with_name(path.name + ".tmp")
            save_file({"features": memo[space]}, str(tmp))
            tmp.replace(path)
        return memo[space]

    return get


def reference_drift(run) -> dict:
    """Drift statistics of the held-out real images, cached in ``reference/drift.json``."""
    from .drift import drift_statistics

    path = run.reference / "drift.json"
    if path.exists():
        return json.loads(path.read_text())
    stats = drift_statistics(load_images(run.real / "heldout", read_metadata(run.real / "heldout")))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return stats


def evaluate_generation(cfg, run, generation: int, names, device="cpu", classifier=None) -> dict:
    """Metrics ``names`` of generation ``generation``'s samples (main process, no sharding).

    Drift statistics also get ``<key>_reference``: the same statistic of the held-out real images.
    """
    names = check_names(names)
    if not names:
        return {}
    samples_dir = run.stage_path(generation, "generate")
    records = read_metadata(samples_dir)
    samples = load_images(samples_dir, records)
    if classifier is None and cfg.metrics.features == "classifier" and (run.reference / "classifier").exists():
        from .classifier import load_classifier

        classifier = load_classifier(run.reference / "classifier")
    spaces = FeatureSpaces(cfg.metrics, classifier=classifier, device=device)
    train = None
    if {"memorization", "generalization", "entropy"} & set(names):
        train_dir = run.stage_path(generation, "mix")
        train = load_images(train_dir, read_metadata(train_dir))
    out = compute_metrics(
        names, cfg.metrics, spaces, samples, reference_features(cfg, run, spaces),
        captions=[r.get("text") for r in records], train=train,
    )
    if set(DRIFT_METRICS) & set(names):
        ref = reference_drift(run)
        out.update({f"{k}_reference": ref[k] for k in DRIFT_NAMES if k in out})
    return out


# ---- any two folders ---------------------------------------------------------------------------
def read_folder(folder: str | Path) -> tuple[list[Tensor], list[str] | None]:
    """Images of a folder as (C, H, W) tensors in [-1, 1] (sizes may differ), and their captions.

    With a ``metadata.jsonl`` (an imagefolder image set) its records and ``text`` captions are used;
    otherwise every image file in the folder, sorted by name, and no captions.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MetricInputError(f"{folder}: not a folder")
    if (folder / "metadata.jsonl").exists():
        records = read_metadata(folder)
        paths = [folder / r["file_name"] for r in records]
        captions = [r.get("text") for r in records]
        captions = captions if all(isinstance(c, str) and c for c in captions) else None
    else:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        captions = None
    images = []
    for path in paths:
        try:
            with Image.open(path) as im:
                rgb = torch.from_numpy(np.asarray(im.convert("RGB")).copy())
        except (OSError, ValueError) as err:
            raise ImageSetError(f"{path}: cannot read image ({err})") from None
        images.append(rgb.permute(2, 0, 1).float() / 127.5 - 1.0)
    return images, captions


def mixed_sizes(images: list[Tensor]) -> bool:
    return len({tuple(im.shape[-2:]) for im in images}) > 1


def evaluate_folders(real_dir, fake_dir, names, mcfg, train_dir=None, device="cpu") -> tuple[dict, list[str]]:
    """Metrics of ``fake_dir`` against ``real_dir`` (memorization etc. against ``train_dir``,
    default ``real_dir``). Returns the metrics and notes worth telling the user."""
    names = check_names(names)
    real, _ = read_folder(real_dir)
    fake, captions = read_folder(fake_dir)
    for label, images, folder in (("--real", real, real_dir), ("--fake", fake, fake_dir)):
        if not images:
            raise MetricInputError(f"{label} {folder}: no images (.png/.jpg/.jpeg/.webp/.bmp)")
    notes = []
    if mixed_sizes(real) or mixed_sizes(fake) or real[0].shape != fake[0].shape:
        h, w = real[0].shape[-2:]
        notes.append(f"images of mixed sizes: Inception resizes each to 299x299 (as torch-fidelity does), "
                     f"pixel features resize to {h}x{w}")
    train = real if train_dir is None else read_folder(train_dir)[0]
    spaces = FeatureSpaces(mcfg, pixel_size=tuple(real[0].shape[-2:]), device=device)
    memo: dict[str, Tensor] = {}

    def ref(space: str) -> Tensor:
        if space not in memo:
            if len(real) < 2:
                raise MetricInputError(f"--real {real_dir}: {len(real)} image; Fréchet/kernel distances need at least 2")
            memo[space] = spaces(space, real)
        return memo[space]

    if "clip_score" in names and captions is None:
        raise MetricInputError(f"clip_score needs captions: --fake {fake_dir} has no metadata.jsonl with a 'text' "
                               f"for every image")
    out = compute_metrics(names, mcfg, spaces, fake, ref, captions=captions, train=train)
    return out, notes
