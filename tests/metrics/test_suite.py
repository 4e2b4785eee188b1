from types import SimpleNamespace

import pytest
import torch

from chain_of_diffusion.metrics import METRIC_NAMES
from chain_of_diffusion.metrics.suite import (
    FeatureSpaces,
    MetricInputError,
    check_names,
    compute_metrics,
    feature_spaces_needed,
    pixel_features,
)

MCFG = SimpleNamespace(features="pixels", prdc_k=2, prdc_features=None, kid_subsets=5, kid_subset_size=10,
                       entropy_k=1, batch_size=8, inception_weights=None, clip_model="x", clip_pretrained=None)


def _images(n, seed, shift=0.0):
    return (torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 0.5 + shift).clamp(-1, 1)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(MetricInputError) as err:
        check_names(["fid_inception", "fidd"])
    assert "'fidd'" in str(err.value) and all(n in str(err.value) for n in METRIC_NAMES)


def test_pixel_metrics_without_any_weights():
    samples, real = _images(12, 0), _images(12, 1, shift=-0.5)
    names = ["fd_classifier", "precision", "recall", "density", "coverage", "saturation", "hf_energy",
             "sharpness", "memorization", "generalization", "entropy"]
    out = compute_metrics(names, MCFG, FeatureSpaces(MCFG), samples, lambda space: pixel_features(real),
                          train=samples)
    assert set(out) == {"fd_pixels", "precision", "recall", "density", "coverage", "saturation_mean",
                        "saturation_std", "hf_energy", "sharpness", "memorization", "generalization", "entropy"}
    assert out["memorization"] == 1.0  # the samples are their own training set
    assert out["fd_pixels"] > 0
    same = compute_metrics(["fd_classifier", "precision"], MCFG, FeatureSpaces(MCFG), samples,
                           lambda space: pixel_features(samples))
    assert abs(same["fd_pixels"]) < 1e-6 and same["precision"] == 1.0


def test_bad_inputs_are_one_line_errors():
    spaces = FeatureSpaces(MCFG)
    with pytest.raises(MetricInputError, match="at least 2"):
        compute_metrics(["fd_classifier"], MCFG, spaces, _images(1, 0), lambda s: pixel_features(_images(5, 1)))
    with pytest.raises(MetricInputError, match="one caption per image"):
        compute_metrics(["clip_score"], MCFG, spaces, _images(3, 0), lambda s: None, captions=None)
    with pytest.raises(MetricInputError, match="training images"):
        compute_metrics(["memorization"], MCFG, spaces, _images(3, 0), lambda s: None)


def test_feature_spaces_needed():
    assert feature_spaces_needed(["fid_inception", "precision"], "classifier", "clip") == {"inception", "clip"}
    assert feature_spaces_needed(["saturation"], "classifier", None) == set()


def test_pixel_features_resize_mixed_sizes():
    images = [torch.zeros(3, 8, 8), torch.ones(3, 16, 16)]
    feats = pixel_features(images)
    assert feats.shape == (2, 3 * 8 * 8) and torch.allclose(feats[1], torch.ones(192))
