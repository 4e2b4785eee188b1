"""Files -> metrics: evaluate one generation of a chain, or any two image folders.

This module reads and writes files in the folders it is given (:class:`ReferenceFolders`,
:class:`GenerationFolders`) and knows nothing of the run directory's layout: the evaluate and
reference stages (:mod:`chain_of_diffusion.stages`) and ``scripts/evaluate.py`` say where things
are. The names -> values step is :func:`~.suite.compute_metrics`, for every caller.

The reference (held-out real) features of the pretrained feature spaces are cached in the chain's
reference folder on first use (``features_<space>.safetensors``), so every generation and every
re-evaluation with ``scripts/evaluate.py`` pays for them once. The samples' features in those
spaces are extracted by the evaluate stage sharded over processes (:func:`sample_features_sharded`)
and cached next to the generation's metrics (``features_<space>.safetensors`` in the evaluate
folder, tagged with a hash of the image set's file names), where ``scripts/evaluate.py`` finds them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor

from chain_of_diffusion.data.imageset import ImageSetError, caption_labels, load_images, read_metadata
from chain_of_diffusion.runs import atomic_replace, atomic_write_json

from .drift import DRIFT_NAMES
from .suite import (
    DRIFT_METRICS,
    PRETRAINED_SPACES,
    FeatureSpaces,
    MetricInputError,
    check_names,
    compute_metrics,
    sample_spaces,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
HELDOUT_FEATURES = "heldout_features.safetensors"  # the cheap space's held-out features (reference stage)
CLASSIFIER = "classifier"  # the real-data classifier's folder in the reference folder
DRIFT = "drift.json"  # the held-out images' drift statistics in the reference folder


@dataclass(frozen=True)
class ReferenceFolders:
    """What a generation is compared against. ``reference``: the chain's reference folder (the
    held-out features, the classifier, the cached pretrained features, drift statistics);
    ``heldout``: the held-out real image set."""

    reference: Path
    heldout: Path


@dataclass(frozen=True)
class GenerationFolders:
    """The folders one generation's evaluation reads and writes. ``samples``: its image set;
    ``train_set``: what it trained on (memorization, generalization, entropy); ``features``: where
    the samples' pretrained features are cached (the evaluate stage's folder)."""

    samples: Path
    train_set: Path
    features: Path
    reference: ReferenceFolders


def _save_features(path: Path, features: Tensor, metadata: dict | None = None) -> None:
    with atomic_replace(path) as tmp:
        save_file({"features": features.contiguous()}, str(tmp), metadata=metadata)


# ---- a chain's generation --------------------------------------------------------------------
def _cache_name(cfg, space: str) -> str:
    if space == "clip":  # the embedding depends on the model and its weights
        tag = f"{cfg.metrics.clip_model}_{Path(str(cfg.metrics.clip_pretrained)).name}"
        return "features_clip_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", tag) + ".safetensors"
    if space == "dinov2":
        # the folder's name alone could be shared by two different checkpoints: add a hash of the value
        model = str(cfg.metrics.dinov2_model)
        tag = f"{Path(model).name}_{hashlib.sha256(model.encode()).hexdigest()[:8]}"
        return "features_dinov2_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", tag) + ".safetensors"
    return f"features_{space}.safetensors"


def reference_features(cfg, ref: ReferenceFolders, spaces: FeatureSpaces):
    """space -> (M, D) held-out features; cached in ``ref.reference`` (written atomically)."""
    memo: dict[str, Tensor] = {}

    def get(space: str) -> Tensor:
        if space in memo:
            return memo[space]
        if space == cfg.metrics.features and space in ("classifier", "pixels"):
            memo[space] = load_file(str(Path(ref.reference) / HELDOUT_FEATURES))["features"]
            return memo[space]
        path = Path(ref.reference) / _cache_name(cfg, space)
        if path.exists():
            memo[space] = load_file(str(path))["features"]
            return memo[space]
        heldout = load_images(ref.heldout, read_metadata(ref.heldout))
        memo[space] = spaces(space, heldout).contiguous()
        if space in PRETRAINED_SPACES:  # the pixel/classifier spaces are cheap to recompute
            _save_features(path, memo[space])
        return memo[space]

    return get


def image_set_key(records: Sequence[dict]) -> str:
    """Identifies an image set by its records' file names (image sets are written once, never edited)."""
    return hashlib.sha256("\n".join(r["file_name"] for r in records).encode()).hexdigest()[:16]


def load_sample_features(folder: Path, cfg, space: str, key: str) -> Tensor | None:
    """Cached features of the image set ``key`` in ``space`` from ``folder``, or None."""
    from safetensors import safe_open

    path = Path(folder) / _cache_name(cfg, space)
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        if (f.metadata() or {}).get("image_set") != key:
            return None  # features of another image set (or of an older layout): recompute
        return f.get_tensor("features")


def save_sample_features(folder: Path, cfg, space: str, key: str, features: Tensor) -> Path:
    """Write ``features`` of the image set ``key`` atomically into ``folder``."""
    path = Path(folder) / _cache_name(cfg, space)
    _save_features(path, features, metadata={"image_set": key, "space": space})
    return path


def _gather_rows(accelerator, rows: Tensor) -> Tensor:
    """Every process's (n_i, D) rows concatenated in rank order: (sum n_i, D) on the CPU, bit-exact.
    A process with no rows may pass any (0, d) tensor."""
    device = accelerator.device
    sizes = accelerator.gather(torch.tensor([list(rows.shape[:2])], device=device)).tolist()
    width, dim = max(n for n, _ in sizes), max(d for _, d in sizes)
    padded = torch.zeros(width, dim, dtype=torch.float32, device=device)
    padded[: rows.shape[0]] = rows.to(device=device, dtype=torch.float32)
    everything = accelerator.gather(padded).cpu()
    return torch.cat([everything[r * width : r * width + n] for r, (n, _) in enumerate(sizes)])


def sample_features_sharded(cfg, images: Tensor, records: Sequence[dict], out: Path, accelerator,
                            spaces: FeatureSpaces) -> dict[str, Tensor]:
    """Called by every process with its share ``images`` of the samples ``records`` (the contiguous
    block ``accelerator.split_between_processes`` gave it, possibly empty): the features of the
    share in each pretrained space the metrics need (:func:`~.suite.sample_spaces`), gathered in
    order; cached in ``out`` and returned on the main process ({} on the others).

    The networks see fixed-size batches, so the result is bit-identical for any process count.
    """
    out_features: dict[str, Tensor] = {}
    for space in sample_spaces(cfg.metrics.names, cfg.metrics):
        mine = spaces(space, images) if len(images) else torch.empty(0, 0)
        feats = _gather_rows(accelerator, mine) if accelerator.num_processes > 1 else mine
        if accelerator.is_main_process:
            out_features[space] = feats
            save_sample_features(out, cfg, space, image_set_key(records), feats)
    return out_features


def _features_sharded(folder: Path, records: Sequence[dict], space: str, accelerator, spaces: FeatureSpaces) -> Tensor:
    """Every process: features of its contiguous share of an image set in ``space``, gathered in
    order: (N, D) on the main process (fixed-size batches: bit-identical for any process count)."""
    with accelerator.split_between_processes(list(range(len(records)))) as mine:
        images = load_images(folder, [records[i] for i in mine]) if len(mine) else None
        feats = spaces(space, images) if images is not None else torch.empty(0, 0)
    return _gather_rows(accelerator, feats) if accelerator.num_processes > 1 else feats


def reference_stage_features(cfg, heldout_dir: Path, train_dir: Path, out: Path, accelerator,
                             spaces: FeatureSpaces) -> dict:
    """Called by every process in the reference stage: the held-out real images' (``heldout_dir``)
    features in every pretrained space the metrics need (Inception, CLIP, DINOv2), extracted over
    processes and written by the main process into ``out`` (the reference folder being built), where
    every generation's evaluation reads them; and ``fid_inception_reference`` /
    ``kid_inception_reference`` (+ ``kid_inception_std_reference``), the real training set
    (``train_dir``) against the held-out one: the floor a generation's value is read against.
    Returns that summary on the main process ({} elsewhere).
    """
    from .kid import kernel_distance
    from .suite import fid_torch_fidelity

    heldout_records = read_metadata(heldout_dir)
    held: dict[str, Tensor] = {}
    for space in sample_spaces(cfg.metrics.names, cfg.metrics):
        held[space] = _features_sharded(heldout_dir, heldout_records, space, accelerator, spaces)
        if accelerator.is_main_process:
            _save_features(Path(out) / _cache_name(cfg, space), held[space])
    names = set(cfg.metrics.names)
    if not names & {"fid_inception", "kid_inception"}:
        return {}
    train_records = read_metadata(train_dir)
    real = _features_sharded(train_dir, train_records, "inception", accelerator, spaces)
    if not accelerator.is_main_process:
        return {}
    summary = {}
    if "fid_inception" in names:
        summary["fid_inception_reference"] = fid_torch_fidelity(real, held["inception"])
    if "kid_inception" in names:
        mean, std = kernel_distance(real, held["inception"], subsets=cfg.metrics.kid_subsets,
                                    subset_size=cfg.metrics.kid_subset_size)
        summary["kid_inception_reference"], summary["kid_inception_std_reference"] = mean, std
    return summary


def reference_drift(ref: ReferenceFolders) -> dict:
    """Drift statistics of the held-out real images, cached in the reference folder's ``drift.json``."""
    from .drift import drift_statistics

    path = Path(ref.reference) / DRIFT
    if path.exists():
        return json.loads(path.read_text())
    stats = drift_statistics(load_images(ref.heldout, read_metadata(ref.heldout)))
    atomic_write_json(path, stats)
    return stats


def first_by_index(records: Sequence[dict], budget: int) -> list[dict]:
    """The samples a generation is judged on: those with ``index`` below ``budget`` (the selection
    budget N), i.e. the first N drawn, each with its own seed, before any selection.

    With ``select.oversample`` > 1 the generate stage renders more candidates than are kept; taking
    the first N measures the model on as many images as a variant without oversampling, so metrics
    that depend on the sample count (Fréchet distances above all) compare across variants.
    """
    return [r for r in records if int(r.get("index", 0)) < budget]


def _check_same_size(samples: Tensor, samples_dir: Path, heldout_dir: Path) -> None:
    """A one-line error naming both sizes where a generation's samples and the held-out real images
    differ in size: pixel features would not line up, and Inception/CLIP/DINOv2 (which resize every
    image) would compare them without a word."""
    if samples.ndim != 4 or not (Path(heldout_dir) / "metadata.jsonl").is_file():
        return  # points, or a run whose held-out images are gone (their features are cached)
    first = load_images(heldout_dir, read_metadata(heldout_dir)[:1])
    if first.ndim != 4 or samples.shape[-2:] == first.shape[-2:]:
        return
    (h, w), (rh, rw) = samples.shape[-2:], first.shape[-2:]
    raise MetricInputError(f"{samples_dir}: the samples are {h}x{w} pixels but the held-out real images "
                           f"({heldout_dir}) are {rh}x{rw}; metrics compare images of one size (data.resolution)")


def evaluate_generation(cfg, folders: GenerationFolders, records: Sequence[dict], names, device="cpu",
                        classifier=None, sample_features: dict[str, Tensor] | None = None,
                        spaces: FeatureSpaces | None = None) -> dict:
    """Metrics ``names`` of a generation's samples ``records`` (in ``folders.samples``; main process).

    ``sample_features``: space -> (N, D) features of the samples already extracted (the evaluate
    stage's sharded extraction); the samples' Inception/CLIP/DINOv2 features not given are read from
    the cache in ``folders.features``, else extracted here and written to that cache (where the
    folder exists). ``spaces``: extractors to reuse. Drift statistics also get ``<key>_reference``:
    the same statistic of the held-out real images.
    """
    names = check_names(names)
    if not names:
        return {}
    ref = folders.reference
    samples = load_images(folders.samples, records)
    _check_same_size(samples, folders.samples, ref.heldout)
    classifier_dir = Path(ref.reference) / CLASSIFIER
    wants_classifier = cfg.metrics.features == "classifier" or "caption_accuracy" in names
    if classifier is None and wants_classifier and classifier_dir.exists():
        from .classifier import load_classifier

        classifier = load_classifier(classifier_dir)
    spaces = spaces or FeatureSpaces(cfg.metrics, classifier=classifier, device=device)
    train = None
    if {"memorization", "generalization", "entropy"} & set(names):
        train = load_images(folders.train_set, read_metadata(folders.train_set))
    feature_dir = Path(folders.features)
    key = image_set_key(records)
    given = dict(sample_features or {})
    for space in sample_spaces(names, cfg.metrics):
        if space not in given:
            given[space] = load_sample_features(feature_dir, cfg, space, key)
        if given[space] is None:
            given[space] = spaces(space, samples)
            if feature_dir.is_dir():
                save_sample_features(feature_dir, cfg, space, key, given[space])
    out = compute_metrics(
        names, cfg.metrics, spaces, samples, reference_features(cfg, ref, spaces),
        captions=[r.get("text") for r in records], train=train, sample_features=given,
        caption_labels=caption_labels(read_metadata(ref.heldout)) if "caption_accuracy" in names else None,
    )
    if set(DRIFT_METRICS) & set(names):
        drift_ref = reference_drift(ref)
        out.update({f"{k}_reference": drift_ref[k] for k in DRIFT_NAMES if k in out})
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
