import math

import pytest
import torch

from chain_of_diffusion.metrics.kid import kernel_distance

pytest.importorskip("torch_fidelity", reason="torch-fidelity is not installed")


def test_unbiased_on_two_samples_of_one_distribution():
    # the unbiased MMD^2 estimate averages to 0 for equal distributions (a biased one stays > 0)
    means = []
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        a, b = torch.randn(60, 8, generator=g), torch.randn(60, 8, generator=g)
        means.append(kernel_distance(a, b, subsets=10, subset_size=30, seed=seed)[0])
    spread = torch.tensor(means).std().item()
    assert abs(sum(means) / len(means)) < 3 * spread / len(means) ** 0.5
    assert min(means) < 0 < max(means)  # both signs: no positive bias


def test_shifted_distribution_is_clearly_positive():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(60, 8, generator=g), torch.randn(60, 8, generator=g) + 1.0
    mean, std = kernel_distance(a, b, subsets=10, subset_size=30)
    assert mean > 3 * std > 0


def test_subset_size_shrinks_for_small_sets_and_needs_two():
    a, b = torch.randn(5, 4), torch.randn(7, 4)
    mean, std = kernel_distance(a, b)
    assert isinstance(mean, float) and math.isfinite(mean) and math.isfinite(std)
    with pytest.raises(ValueError, match="at least 2"):
        kernel_distance(a[:1], b)
