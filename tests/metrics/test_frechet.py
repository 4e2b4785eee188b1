import numpy as np
import pytest
import torch

from chain_of_diffusion.metrics import frechet_distance, gaussian_stats
from chain_of_diffusion.metrics.frechet import frechet_distance_from_stats, trace_sqrt_product_from_features


def closed_form_diag(m1, v1, m2, v2) -> float:
    """FD of two Gaussians with diagonal covariances (variances v1, v2)."""
    return float(((m1 - m2) ** 2).sum() + (v1 + v2 - 2.0 * np.sqrt(v1 * v2)).sum())


def test_from_stats_matches_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    d = 6
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    got = frechet_distance_from_stats(m1, np.diag(v1), m2, np.diag(v2))
    assert got == pytest.approx(closed_form_diag(m1, v1, m2, v2), rel=1e-10, abs=1e-10)


def test_sampled_gaussians_approach_closed_form():
    gen = torch.Generator().manual_seed(0)
    d, n = 4, 200_000
    m1, m2 = torch.tensor([0.0, 1.0, -1.0, 2.0]), torch.tensor([0.5, 1.0, 0.0, 0.0])
    s1, s2 = torch.tensor([1.0, 0.5, 2.0, 1.0]), torch.tensor([1.0, 1.5, 0.5, 3.0])  # std devs
    a = m1 + s1 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    b = m2 + s2 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    expected = closed_form_diag(m1.numpy(), s1.numpy() ** 2, m2.numpy(), s2.numpy() ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


def test_set_against_itself_is_zero():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(1))
    assert abs(frechet_distance(x, x)) < 1e-6
    assert frechet_distance(x, x + 1.0) == pytest.approx(16.0, rel=1e-6)


def test_singular_covariance_is_finite_and_exact():
    # Fewer images than dims: rank-deficient covariances, where sqrtm needs a ridge
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 32, generator=gen), torch.randn(6, 32, generator=gen)
    value = frechet_distance(a, b)
    assert np.isfinite(value) and value > 0
    assert abs(frechet_distance(a, a)) < 1e-9  # no ridge: a set against itself is exactly 0
    # the same value as sqrtm with pytorch-fid's ridge, up to what the ridge adds
    mu_a, s_a = gaussian_stats(a)
    mu_b, s_b = gaussian_stats(b)
    assert value == pytest.approx(frechet_distance_from_stats(mu_a, s_a, mu_b, s_b), rel=1e-3)


def test_trace_term_from_features_equals_sqrtm():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(300, 8, generator=gen, dtype=torch.float64) @ torch.randn(8, 8, generator=gen, dtype=torch.float64)
    b = torch.randn(200, 8, generator=gen, dtype=torch.float64) * 2.0 + 1.0
    import scipy.linalg

    (_, s_a), (_, s_b) = gaussian_stats(a), gaussian_stats(b)
    expected = np.trace(np.real(scipy.linalg.sqrtm(s_a @ s_b)))
    assert trace_sqrt_product_from_features(a, b) == pytest.approx(expected, rel=1e-9)


def test_gaussian_stats_shapes_and_dtype():
    mu, sigma = gaussian_stats(torch.randn(10, 3))
    assert mu.shape == (3,) and sigma.shape == (3, 3)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    assert gaussian_stats(torch.randn(10, 1))[1].shape == (1, 1)


def test_needs_two_images():
    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        frechet_distance(torch.randn(1, 4), torch.randn(5, 4))


@pytest.mark.parametrize("n", [4, 40])  # fewer images than dims (exact trace) and more (sqrtm)
def test_two_feature_dimensions_are_an_error_naming_both_shapes(n):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=rf"\({n}, 12\) and \({n}, 20\)"):
        frechet_distance(torch.randn(n, 12, generator=g), torch.randn(n, 20, generator=g))


def test_exact_trace_path_equals_the_covariance_formula():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, 30, generator=g, dtype=torch.float64), torch.randn(9, 30, generator=g, dtype=torch.float64) + 0.5
    (mu_a, s_a), (mu_b, s_b) = gaussian_stats(a), gaussian_stats(b)
    expected = (mu_a - mu_b) @ (mu_a - mu_b) + np.trace(s_a) + np.trace(s_b) - 2 * trace_sqrt_product_from_features(a, b)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)
