"""The theory checks of issue 12 (chain_of_diffusion.theory, docs/theory.md) at fixed seeds.

Where a seed is many independent chains the tolerance is Z standard errors of the measured mean, per
generation: a correct simulation lands outside it at about 1 point in 16,000, a wrong formula (a drift off
by a few percent, a missing (n-1)/n) lands far outside. The linear DAE is one chain per seed, so its
tolerances are error budgets, stated where they are used.
"""

import numpy as np
import pytest

from chain_of_diffusion import theory

Z = 4.0


def _z(check):
    # generation 0 is the real data itself: measured == predicted with zero spread
    return np.abs(check.measured - check.predicted)[1:] / check.stderr[1:]


def test_gaussian_refitting_unbiased_is_a_martingale_whose_log_drifts_down_and_mle_shrinks():
    c = theory.gaussian_refit(n=20, generations=30, chains=20_000, seed=0)
    assert (_z(c) < Z).all(), _z(c).max(0)
    # the drift is real: 30 generations of psi(9.5) + log(2/19) = -0.0536 each, hundreds of standard errors
    assert c.predicted[-1, 1] == pytest.approx(30 * -0.053552, abs=1e-4)
    assert c.measured[-1, 1] < -50 * c.stderr[-1, 1]
    # ... while the unbiased mean stays at sigma0^2 = 1 and the MLE one is ((n-1)/n)^30 = 0.215
    assert c.predicted[-1, 2] == pytest.approx(0.95**30)
    assert c.measured[-1, 2] < 0.25 and abs(c.measured[-1, 0] - 1) < Z * c.stderr[-1, 0]


def test_least_squares_on_its_own_labels_gains_sigma2_d_over_T_minus_d_minus_1_per_generation():
    # T = 25 samples for d = 10: small enough that T - d - 1 and a naive T - d differ by 7%, 8 standard errors
    c = theory.regression_chain(d=10, T=25, sigma=1.0, generations=10, chains=4000, seed=0)
    assert (_z(c) < Z).all(), _z(c).max()
    ex = c.extra
    assert ex["predicted_slope"] == pytest.approx(10 / 14)
    assert abs(ex["slope"] - ex["predicted_slope"]) < Z * ex["slope_se"], ex


def test_categorical_with_real_weight_reaches_the_derived_fixed_point():
    p0 = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    c = theory.categorical_chain(p0, n=50, alphas=(0.05, 0.2), generations=60, chains=5000, seed=0)
    assert (_z(c) < Z).all(), _z(c).max(0)
    for j, alpha in enumerate((0.05, 0.2)):
        e_star = theory.categorical_fixed_point(p0, 50, alpha)
        # the closed form is the recursion's limit (algebra check), and the chain sits there by generation 60
        e = 0.0
        for _ in range(2000):
            e = (1 - alpha) ** 2 * (e + (1 - np.sum(p0**2) - e) / 50)
        assert e == pytest.approx(e_star, rel=1e-9)
        assert abs(c.measured[-1, j] - e_star) < Z * c.stderr[-1, j]
    assert c.measured[-1, 0] > 4 * c.measured[-1, 1]  # less real data, larger stationary error


def test_categorical_without_real_data_is_absorbed_at_a_vertex_drawn_from_p0():
    p0 = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    c = theory.categorical_chain(p0, n=50, alphas=(0.0,), generations=300, chains=2000, seed=1)
    assert (_z(c) < Z).all(), _z(c).max()
    assert theory.categorical_fixed_point(p0, 50, 0.0) == pytest.approx(1 - np.sum(p0**2))
    assert c.extra["absorbed"] > 0.97
    absorbed = c.extra["absorbed"] * 2000
    # which vertex: a multinomial draw of the absorbed chains with probabilities p0 (E p_g = p0 forever)
    se = np.sqrt(p0 * (1 - p0) / absorbed)
    assert (np.abs(c.extra["vertex_frequencies"] - p0) < Z * se).all(), c.extra["vertex_frequencies"]


def test_linear_dae_prediction_and_fixed_point():
    lam0 = np.array([4.0, 1.0, 0.25])
    one = theory.linear_dae_prediction(lam0, 0.5, 0.0, 1)[1]
    assert one == pytest.approx([16 / 4.25, 1 / 1.25, 0.0625 / 0.5])  # tests/test_dae.py's 3.76, 0.80, 0.125
    assert theory.linear_dae_prediction(lam0, 0.5, 1.0, 5) == pytest.approx(np.tile(lam0, (6, 1)))
    for beta in (0.1, 0.5, 0.9):
        far = theory.linear_dae_prediction(lam0, 0.5, beta, 400)
        star = theory.linear_dae_fixed_point(lam0, 0.5, beta)
        assert far[-1] == pytest.approx(star, rel=1e-9)
        assert (far[1:] >= beta * lam0 - 1e-12).all() and (np.diff(far, axis=0) <= 1e-12).all()


@pytest.fixture(scope="module")
def dae_chains():
    return {beta: theory.linear_dae_chain(beta=beta, generations=4, n=16384, steps=300, seed=0)
            for beta in (0.0, 0.5)}


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_trained_linear_dae_chain_follows_the_recursion_one_generation_at_a_time(dae_chains, beta):
    c = dae_chains[beta]
    we = c.extra["weight_error"]
    # the trainer gets the optimal denoiser of each generation's data (tests/test_dae.py allows 0.03)
    assert (we < 0.02).all(), we
    gain = c.extra["predicted_gain"]
    # budget: each of the two eigenvalues compared (the input's, the output's) is estimated from n draws,
    # relative SD sqrt(2/n) each, Z of them; a gain error delta moves the output eigenvalue by 2 delta / gain.
    # Gains below 0.1 are left out: there the training error is the measurement
    tol = Z * np.sqrt(4 / c.extra["n"]) + 2 * we[:, None] / gain
    rel = np.abs(c.measured[1:] / c.extra["one_step"][1:] - 1)
    resolved = gain >= 0.1
    assert (rel[resolved] < tol[resolved]).all(), (rel, tol)
    # with the trained W's own errors included, every generation and eigenvalue agrees, the collapsed one
    # too: the output is estimated from the (1 - beta) n rows pushed through, with fresh noise (relative
    # SD sqrt(2/rows)), and for beta > 0 those rows are a random subset whose second moment differs from M
    # by about as much again
    rows = c.extra["n"] * (1 - beta)
    through = np.abs(c.measured[1:] / c.extra["through_trained_w"][1:] - 1)
    assert (through < Z * np.sqrt(4 / rows)).all(), through


def test_trained_linear_dae_chain_collapses_without_real_data(dae_chains):
    c = dae_chains[0.0]
    # the whole trajectory, while every gain so far is >= 0.1: errors are amplified, each generation's
    # d log lambda' / d log lambda = (lambda + 2 sigma^2) / (lambda + sigma^2) lies in (1, 2), so 15%
    resolved = np.vstack([np.ones(3, bool), np.cumprod(c.extra["predicted_gain"] >= 0.1, 0).astype(bool)])
    rel = np.abs(c.measured / c.predicted - 1)
    assert (rel[resolved] < 0.15).all(), rel
    # the smallest eigenvalue is gone, 0.25 -> 1.4e-4 predicted; within a factor 2 of that, as the last
    # step's gain is 0.023, where a gain error of 0.005 alone moves it by 2 * 0.005 / 0.023 = 43%
    assert c.measured[-1, 2] < 1e-3 and 0.5 < c.measured[-1, 2] / c.predicted[-1, 2] < 2, c.measured[-1]
    norm, pred, bound = (c.extra[k] for k in ("operator_norm", "predicted_operator_norm",
                                              "operator_norm_bound"))
    assert np.abs(norm - pred).max() < 0.015, (norm, pred)
    assert (np.diff(norm) < 0).all() and norm[-1] < bound[-1], (norm, bound)


def test_trained_linear_dae_chain_with_real_data_stays_above_the_floor(dae_chains):
    c = dae_chains[0.5]
    lam0 = np.array([4.0, 1.0, 0.25])
    # errors contract here (each generation keeps at most (1 - beta) of the last one's), so 8% everywhere
    assert (np.abs(c.measured / c.predicted - 1) < 0.08).all(), c.measured / c.predicted
    assert (c.measured[1:] > 0.5 * lam0).all()  # every variance stays above beta lambda0 ...
    # ... so every trained gain stays above beta lambda0 / (beta lambda0 + sigma^2)
    assert (c.extra["gain"] > c.extra["gain_floor"]).all()
    assert c.measured[-1] == pytest.approx(c.extra["fixed_point"], rel=0.08)
