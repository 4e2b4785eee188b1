"""Metric names -> values: the one place that knows which feature space and which function each
name in ``metrics.names`` needs. Used by the evaluate stage and by ``scripts/evaluate.py``.

Inputs are image tensors in [-1, 1] ((N, C, H, W), or lists of (C, H, W) when sizes differ); the
reference (held-out real) side is given as a function ``space -> features`` so callers can cache it.
Feature extractors are built on first use, so a run that asks for no Inception metric never needs
its weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from chain_of_diffusion.config import PRDC_NAMES, PRETRAINED_SPACES
from chain_of_diffusion.errors import ConfigError

from . import METRIC_NAMES
from .drift import drift_statistics
from .entropy import knn_entropy
from .frechet import frechet_distance
from .kid import kernel_distance
from .neighbors import generalization_score, memorization_ratio
from .prdc import prdc

Images = Tensor | Sequence[Tensor]
DRIFT_METRICS = ("saturation", "hf_energy", "sharpness")
FEATURE_SPACES = ("pixels", "classifier", "inception", "clip", "dinov2")


class MetricInputError(ConfigError):
    """The inputs cannot give the asked metric (too few images, no captions); one line."""


def check_names(names: Sequence[str]) -> list[str]:
    """The names, or a one-line error listing the known ones."""
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise MetricInputError(f"unknown metric {unknown[0]!r}; known: {', '.join(METRIC_NAMES)}")
    return list(names)


def feature_spaces_needed(names: Sequence[str], features: str, prdc_features: str | None) -> set[str]:
    """Which feature spaces the reference side must provide for ``names``."""
    spaces = set()
    if "fd_classifier" in names:
        spaces.add(features)
    if {"fid_inception", "kid_inception"} & set(names):
        spaces.add("inception")
    if "fd_clip" in names:
        spaces.add("clip")
    if "fd_dinov2" in names:
        spaces.add("dinov2")
    if set(PRDC_NAMES) & set(names):
        spaces.add(prdc_features or features)
    return spaces


def sample_spaces(names: Sequence[str], mcfg) -> list[str]:
    """The pretrained feature spaces (inception, clip, dinov2: a network per image, worth sharding and
    caching) that ``names`` need of the generated samples, in a fixed order: what the evaluate stage extracts sharded over processes and caches."""
    names = set(names)
    need = set()
    if names & {"fid_inception", "kid_inception"}:
        need.add("inception")
    if names & {"fd_clip", "clip_score"}:
        need.add("clip")
    if "fd_dinov2" in names:
        need.add("dinov2")
    if names & set(PRDC_NAMES):
        need.add(mcfg.prdc_features or mcfg.features)
    return [s for s in PRETRAINED_SPACES if s in need]


def _as_list(images: Images) -> list[Tensor]:
    return list(images.unbind(0)) if isinstance(images, Tensor) else list(images)


def pixel_features(images: Images, size: tuple[int, int] | None = None) -> Tensor:
    """Flattened pixels; images of another size are resized (bilinear, antialiased) to ``size``
    (default: the first image's). (N, C, H, W) -> (N, C*H*W)."""
    items = _as_list(images)
    if not items:
        return torch.empty(0, 0)
    size = size or tuple(items[0].shape[-2:])
    out = []
    for im in items:
        im = im.float()
        if im.dim() == 1:  # a point: its coordinates are its features
            out.append(im)
            continue
        if tuple(im.shape[-2:]) != tuple(size):
            im = F.interpolate(im.unsqueeze(0), size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        out.append(im.flatten())
    return torch.stack(out)


class FeatureSpaces:
    """Feature extractors by name, built on first use.

    Args:
        mcfg: the ``metrics`` config (inception_weights, clip_model, clip_pretrained, dinov2_model,
            batch_size).
        classifier: the run's real-data classifier, for space ``classifier``.
        pixel_size: (H, W) every image is brought to for space ``pixels`` (None: the first image's).
        device: where the Inception / CLIP / DINOv2 networks run.
    """

    def __init__(self, mcfg, classifier=None, pixel_size=None, device: str | torch.device = "cpu"):
        self.mcfg = mcfg
        self.classifier = classifier
        self.pixel_size = pixel_size
        self.device = device
        self._inception = None
        self._clip = None
        self._dinov2 = None

    @property
    def clip(self):
        if self._clip is None:
            from .clip import load_clip

            self._clip = load_clip(self.mcfg.clip_model, self.mcfg.clip_pretrained, self.device)
        return self._clip

    def __call__(self, space: str, images: Images) -> Tensor:
        """(N, D) float32 features of ``images`` in ``space``."""
        if space == "pixels":
            return pixel_features(images, self.pixel_size)
        if space == "classifier":
            if self.classifier is None:
                raise MetricInputError("feature space 'classifier' needs a run's classifier (labelled data)")
            from .classifier import extract_features

            return extract_features(self.classifier, torch.stack(_as_list(images)))
        if space == "inception":
            from .inception import find_inception_weights, inception_features, load_inception

            if self._inception is None:
                weights = find_inception_weights(getattr(self.mcfg, "inception_weights", None))
                self._inception = load_inception(weights, self.device)
            return inception_features(self._inception, images, batch_size=self.mcfg.batch_size)
        if space == "clip":
            from .clip import clip_image_features

            return clip_image_features(self.clip, images, batch_size=self.mcfg.batch_size)
        if space == "dinov2":
            from .dinov2 import DEFAULT_MODEL, dinov2_features, load_dinov2

            if self._dinov2 is None:
                self._dinov2 = load_dinov2(getattr(self.mcfg, "dinov2_model", DEFAULT_MODEL), self.device)
            return dinov2_features(self._dinov2, images, batch_size=self.mcfg.batch_size)
        raise MetricInputError(f"unknown feature space {space!r}; known: {', '.join(FEATURE_SPACES)}")


def caption_accuracy(classifier, samples: Images, captions: Sequence[str] | None,
                     caption_labels: dict[str, int] | None) -> float:
    """The share of samples the real-data classifier puts in their caption's class (the class of the
    real images with that caption); samples whose caption no real image has are left out."""
    if classifier is None:
        raise MetricInputError("caption_accuracy needs the run's real-data classifier (a source with class labels)")
    items = _as_list(samples)
    if not captions or len(captions) != len(items):
        raise MetricInputError("caption_accuracy needs one caption per image (a 'text' column in metadata.jsonl)")
    known = [i for i, c in enumerate(captions) if c in (caption_labels or {})]
    if not known:
        raise MetricInputError("caption_accuracy: no sample's caption is the caption of a labelled real image")
    from .classifier import accuracy

    labels = torch.tensor([caption_labels[captions[i]] for i in known])
    return accuracy(classifier, torch.stack([items[i] for i in known]), labels)


def fid_torch_fidelity(a: Tensor, b: Tensor) -> float:
    """Fréchet distance exactly as torch-fidelity computes it (Tr sqrt(S_a S_b) from eigenvalues, no
    eps ridge), so fid_inception matches ``torch_fidelity.calculate_metrics`` even with fewer images
    than the 2048 feature dims. (N, D), (M, D) -> float."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    stats = [fid_features_to_statistics(x.detach().float().cpu()) for x in (a, b)]
    return float(fid_statistics_to_metric(stats[0], stats[1], verbose=False)[KEY_METRIC_FID])


def _at_least(n: int, low: int, what: str) -> None:
    if n < low:
        raise MetricInputError(f"{what} needs at least {low} images, got {n}")


def compute_metrics(
    names: Sequence[str],
    mcfg,
    spaces: FeatureSpaces,
    samples: Images,
    reference_features: Callable[[str], Tensor],
    *,
    captions: Sequence[str] | None = None,
    train: Images | None = None,
    sample_features: dict[str, Tensor] | None = None,
    caption_labels: dict[str, int] | None = None,
) -> dict:
    """Values of ``names`` for one generated image set.

    Args:
        names: metric names (see :data:`METRIC_NAMES`).
        mcfg: the ``metrics`` config (features, prdc_k, prdc_features, kid_*, entropy_k).
        spaces: feature extractors.
        samples: the generated images, N of them.
        reference_features: space -> (M, D) held-out real features in that space.
        captions: N captions of the samples (clip_score).
        train: the images the generation trained on (memorization, generalization, entropy).
        sample_features: space -> (N, D) features of ``samples`` already extracted (sharded, or
            read from a cache); the other spaces are extracted here.
        caption_labels: caption -> class of the real images with that caption (caption_accuracy).

    Returns:
        {metric key: float}; keys as documented in :mod:`chain_of_diffusion.metrics`.
    """
    names = check_names(names)
    n = len(_as_list(samples)) if not isinstance(samples, Tensor) else samples.shape[0]
    cache: dict[str, Tensor] = dict(sample_features or {})
    for space, feats in cache.items():
        if feats.shape[0] != n:
            raise ValueError(f"{space} features of {feats.shape[0]} images given for {n} samples")

    def features_of(space: str) -> Tensor:
        if space not in cache:
            cache[space] = spaces(space, samples)
        return cache[space]

    out: dict = {}
    features = mcfg.features
    if "fd_classifier" in names:
        _at_least(n, 2, "a Fréchet distance")
        out[f"fd_{features}"] = frechet_distance(features_of(features), reference_features(features))
    if "fid_inception" in names:
        _at_least(n, 2, "fid_inception")
        out["fid_inception"] = fid_torch_fidelity(features_of("inception"), reference_features("inception"))
    if "kid_inception" in names:
        _at_least(n, 2, "kid_inception")
        mean, std = kernel_distance(features_of("inception"), reference_features("inception"),
                                    subsets=mcfg.kid_subsets, subset_size=mcfg.kid_subset_size)
        out["kid_inception"], out["kid_inception_std"] = mean, std
    if "fd_clip" in names:
        _at_least(n, 2, "fd_clip")
        out["fd_clip"] = frechet_distance(features_of("clip"), reference_features("clip"))
    if "fd_dinov2" in names:
        _at_least(n, 2, "fd_dinov2")
        out["fd_dinov2"] = frechet_distance(features_of("dinov2"), reference_features("dinov2"))
    if "clip_score" in names:
        if not captions or len(captions) != n or not all(isinstance(c, str) and c for c in captions):
            raise MetricInputError("clip_score needs one caption per image (a 'text' column in metadata.jsonl)")
        from .clip import clip_score, clip_text_features

        out["clip_score"] = clip_score(features_of("clip"), clip_text_features(spaces.clip, list(captions)))
    if "caption_accuracy" in names:
        out["caption_accuracy"] = caption_accuracy(spaces.classifier, samples, captions, caption_labels)
    if set(PRDC_NAMES) & set(names):
        space = mcfg.prdc_features or features
        _at_least(n, mcfg.prdc_k + 1, f"precision/recall with k={mcfg.prdc_k}")
        values = prdc(reference_features(space), features_of(space), k=mcfg.prdc_k)
        out.update({k: v for k, v in values.items() if k in names})
    if set(DRIFT_METRICS) & set(names):
        _at_least(n, 1, "drift statistics")
        drift = drift_statistics(samples)
        if "saturation" in names:
            out["saturation_mean"], out["saturation_std"] = drift["saturation_mean"], drift["saturation_std"]
        for key in ("hf_energy", "sharpness"):
            if key in names:
                out[key] = drift[key]
    if {"memorization", "generalization", "entropy"} & set(names):
        if train is None:
            raise MetricInputError("memorization/generalization/entropy need the training images")
        train_pixels = pixel_features(train, spaces.pixel_size)
        if "memorization" in names:
            _at_least(train_pixels.shape[0], 2, "memorization (training set)")
            out["memorization"] = memorization_ratio(pixel_features(samples, spaces.pixel_size), train_pixels)
        if "generalization" in names:
            out["generalization"] = generalization_score(pixel_features(samples, spaces.pixel_size), train_pixels)
        if "entropy" in names:
            out["entropy"] = knn_entropy(spaces(features, train), k=mcfg.entropy_k)
    return out
