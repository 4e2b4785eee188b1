"""Self-consuming chains small enough to solve on paper (issue 12): each check simulates one and returns
what it measured next to what the closed form predicts, generation by generation.

- :func:`gaussian_refit`: a Gaussian refitted to n of its own samples (unbiased and MLE variance).
- :func:`regression_chain`: least squares trained on the previous generation's labels (Dohmatob et al. 2024).
- :func:`categorical_chain`: a categorical refitted from n samples, a share alpha of the real distribution
  mixed back in every generation.
- :func:`linear_dae_chain`: a linear denoising autoencoder trained through the project's trainer on the
  previous generation's outputs, a share beta of fresh real data mixed in (Zhu et al. 2024).

docs/theory.md derives each prediction; scripts/theory.py prints the tables and draws the figures.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch


@dataclass
class Check:
    """One seed of one check. ``measured`` and ``predicted`` are (generations, quantities), column j
    named ``columns[j]``; ``stderr`` is the Monte-Carlo standard error of ``measured`` over the
    independent chains inside this seed (None where a seed is a single chain)."""

    name: str
    generations: np.ndarray
    columns: list[str]
    measured: np.ndarray
    predicted: np.ndarray
    stderr: Optional[np.ndarray] = None
    extra: dict = field(default_factory=dict)


def _mean_and_stderr(per_chain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over the last axis (the chains)."""
    return per_chain.mean(-1), per_chain.std(-1, ddof=1) / math.sqrt(per_chain.shape[-1])


# ---------------------------------------------------------------------------------------------------------
# 1. Gaussian refitting


def log_chi2_drift(n: int) -> float:
    """E[log(chi^2_{n-1} / (n-1))] = psi((n-1)/2) + log(2/(n-1)): what one unbiased refit adds to
    log sigma^2 on average. Negative (Jensen), so the typical chain shrinks while the mean does not."""
    k = n - 1
    return float(torch.special.digamma(torch.tensor(k / 2, dtype=torch.float64))) + math.log(2 / k)


def gaussian_refit_prediction(n: int, generations: int, sigma0: float = 1.0) -> np.ndarray:
    """(generations + 1, 3): E sigma^2 (unbiased), E log sigma^2 (unbiased), E sigma^2 (MLE)."""
    g = np.arange(generations + 1)
    return np.stack([np.full(g.shape, sigma0**2), 2 * math.log(sigma0) + g * log_chi2_drift(n),
                     sigma0**2 * ((n - 1) / n) ** g], 1)


def gaussian_refit(n: int = 20, generations: int = 30, chains: int = 100_000, seed: int = 0,
                   sigma0: float = 1.0) -> Check:
    """``chains`` independent chains, each refitting mean and variance to n samples of its previous
    generation. The mean is refitted too, as a real chain would; the variance recursion does not depend
    on it (the sample variance is independent of the sample mean)."""
    rng = np.random.default_rng(seed)
    paths = {}
    for ddof in (1, 0):
        mu, var = np.zeros(chains), np.full(chains, sigma0**2)
        path = [var]
        for _ in range(generations):
            x = mu[:, None] + np.sqrt(var)[:, None] * rng.standard_normal((chains, n))
            mu, var = x.mean(1), x.var(1, ddof=ddof)
            path.append(var)
        paths[ddof] = np.stack(path)  # (G + 1, chains)
    stats = [_mean_and_stderr(s) for s in (paths[1], np.log(paths[1]), paths[0])]
    return Check(
        "gaussian", np.arange(generations + 1),
        ["E sigma^2 (unbiased)", "E log sigma^2 (unbiased)", "E sigma^2 (MLE)"],
        np.stack([m for m, _ in stats], 1), gaussian_refit_prediction(n, generations, sigma0),
        np.stack([s for _, s in stats], 1),
        # the median chain: where the mass goes while the unbiased mean stays put
        {"median sigma^2 (unbiased)": np.median(paths[1], 1), "n": n, "chains": chains},
    )


# ---------------------------------------------------------------------------------------------------------
# 2. Least squares on its own labels


def regression_prediction(d: int, T: int, sigma: float, generations: int) -> np.ndarray:
    """E||w_g - w*||^2 = (g + 1) sigma^2 d / (T - d - 1): each generation adds an independent OLS error
    (X^T X)^{-1} X^T eps, whose squared norm has mean sigma^2 tr E(X^T X)^{-1} = sigma^2 d / (T - d - 1)."""
    return (np.arange(generations + 1) + 1) * sigma**2 * d / (T - d - 1)


def regression_chain(d: int = 10, T: int = 50, sigma: float = 1.0, generations: int = 10, chains: int = 4000,
                     seed: int = 0) -> Check:
    """Generation 0 fits OLS on T real samples; generation g on T fresh inputs labelled by generation
    g-1's model plus fresh noise. For x ~ N(0, I) the excess test risk is ||w_g - w*||^2."""
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    w_star = torch.randn(d, generator=gen, dtype=f64)
    w = w_star.expand(chains, d)  # generation 0's labeller is the truth
    errors = []
    for _ in range(generations + 1):
        x = torch.randn(chains, T, d, generator=gen, dtype=f64)
        y = x @ w.unsqueeze(-1) + sigma * torch.randn(chains, T, 1, generator=gen, dtype=f64)
        w = torch.linalg.lstsq(x, y).solution.squeeze(-1)
        errors.append(((w - w_star) ** 2).sum(1))
    err = torch.stack(errors).numpy()  # (G + 1, chains)
    g = np.arange(generations + 1)
    # a least-squares slope per chain, so its spread over chains gives the slope's standard error
    slopes = (g - g.mean()) @ (err - err.mean(0)) / ((g - g.mean()) ** 2).sum()
    mean, se = _mean_and_stderr(err)
    slope, slope_se = _mean_and_stderr(slopes)
    return Check("regression", g, ["E||w_g - w*||^2"], mean[:, None],
                 regression_prediction(d, T, sigma, generations)[:, None], se[:, None],
                 {"slope": float(slope), "slope_se": float(slope_se),
                  "predicted_slope": sigma**2 * d / (T - d - 1), "d": d, "T": T, "chains": chains})


# ---------------------------------------------------------------------------------------------------------
# 3. A categorical refitted from n samples, with real-data weight alpha


def categorical_prediction(p0, n: int, alpha: float, generations: int) -> np.ndarray:
    """e_g = E||p_g - p0||^2 from e_0 = 0 under e_{g+1} = a e_g + b, a = (1-alpha)^2 (1 - 1/n),
    b = (1-alpha)^2 (1 - ||p0||^2) / n (docs/theory.md derives it): e_g = e* (1 - a^g)."""
    a = (1 - alpha) ** 2 * (1 - 1 / n)
    return categorical_fixed_point(p0, n, alpha) * (1 - a ** np.arange(generations + 1))


def categorical_fixed_point(p0, n: int, alpha: float) -> float:
    """e* = (1-alpha)^2 (1 - ||p0||^2) / (n - (n-1)(1-alpha)^2); alpha = 0 gives 1 - ||p0||^2, the
    error of a chain absorbed at a vertex drawn with probabilities p0."""
    q, r = 1 - float(np.sum(np.square(p0))), (1 - alpha) ** 2
    return r * q / (n - (n - 1) * r)


def categorical_chain(p0=(0.4, 0.25, 0.15, 0.1, 0.06, 0.04), n: int = 50, alphas=(0.0, 0.05, 0.2),
                      generations: int = 100, chains: int = 20_000, seed: int = 0) -> Check:
    """p_0 = p0; p_{g+1} = alpha p0 + (1 - alpha) * (counts of n draws from p_g) / n, per chain."""
    rng = np.random.default_rng(seed)
    p0 = np.asarray(p0, dtype=np.float64)
    means, ses, predicted, extra = [], [], [], {"fixed_point": {}}
    for alpha in alphas:
        p = np.broadcast_to(p0, (chains, p0.size))
        errs = [np.zeros(chains)]
        for _ in range(generations):
            p = alpha * p0 + (1 - alpha) * rng.multinomial(n, p) / n
            errs.append(((p - p0) ** 2).sum(1))
        mean, se = _mean_and_stderr(np.stack(errs))
        means.append(mean)
        ses.append(se)
        predicted.append(categorical_prediction(p0, n, alpha, generations))
        extra["fixed_point"][alpha] = categorical_fixed_point(p0, n, alpha)
        if alpha == 0:
            # without real data the chain is Wright-Fisher drift: absorbed at a vertex, and because E p_g = p0
            # the vertex is category k with probability p0_k
            at_vertex = p.max(1) == 1
            extra["absorbed"] = float(at_vertex.mean())
            extra["vertex_frequencies"] = np.bincount(p[at_vertex].argmax(1), minlength=p0.size) / max(
                at_vertex.sum(), 1)
    return Check("categorical", np.arange(generations + 1), [f"alpha={a:g}" for a in alphas],
                 np.stack(means, 1), np.stack(predicted, 1), np.stack(ses, 1),
                 {**extra, "p0": p0, "n": n, "chains": chains})


# ---------------------------------------------------------------------------------------------------------
# 4. The linear denoising-autoencoder chain


def gaussian_data(eigenvalues, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws of N(0, diag(eigenvalues)): the real data of the linear-DAE chain."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float32)
    return torch.randn(n, lam.numel(), generator=generator) * lam.sqrt()


def linear_dae_prediction(eigenvalues, sigma: float, beta: float, generations: int) -> np.ndarray:
    """(generations + 1, d): the data eigenvalues under lambda' = beta lambda_0 + (1-beta) lambda^2 /
    (lambda + sigma^2). The optimal linear denoiser of N(0, lambda) is W = lambda / (lambda + sigma^2);
    its output W(x + sigma eps) has variance W^2 (lambda + sigma^2), and mixing in a share beta of real
    data mixes the (zero-mean) covariances."""
    lam0 = np.asarray(eigenvalues, dtype=np.float64)
    out = [lam0]
    for _ in range(generations):
        lam = out[-1]
        out.append(beta * lam0 + (1 - beta) * lam**2 / (lam + sigma**2))
    return np.stack(out)


def linear_dae_fixed_point(eigenvalues, sigma: float, beta: float) -> np.ndarray:
    """The positive root of beta lam^2 + (sigma^2 - beta lam0) lam - beta lam0 sigma^2 = 0, the
    recursion's limit for beta > 0 (it lies in (beta lam0, lam0]); 0 for beta = 0."""
    lam0, s = np.asarray(eigenvalues, dtype=np.float64), sigma**2
    if beta == 0:
        return np.zeros_like(lam0)
    c = beta * lam0
    return (c - s + np.sqrt((s - c) ** 2 + 4 * beta * c * s)) / (2 * beta)


class LinearDenoiser(torch.nn.Module):
    """W x, called as the trainer calls a denoiser: ``net(x_t, t, cond)``; t and cond are ignored
    because the DAE has one noise level and no captions."""

    def __init__(self, d: int):
        super().__init__()
        self.linear = torch.nn.Linear(d, d, bias=False)

    def forward(self, x, t, cond):
        return self.linear(x)


def linear_dae_chain(eigenvalues=(4.0, 1.0, 0.25), sigma: float = 0.5, beta: float = 0.0,
                     generations: int = 4, n: int = 16384, steps: int = 300, batch_size: int = 512,
                     lr: float = 0.02, seed: int = 0) -> Check:
    """Generation g trains a bias-free linear layer with the project's trainer on its n examples; the next
    generation's data is the DAE sampler's one step x <- W(x + sigma eps) on a random (1 - beta) n of
    them, plus beta n fresh real draws. Measured: the eigenvalues of each generation's second moment,
    which the recursion predicts (listed in the order of ``eigenvalues``: the recursion keeps the order).
    ``axis_variances`` are the variances along the real covariance's eigenvectors instead. A finite sample's
    eigenvectors are turned slightly away from those axes (by ~sqrt(lambda_i lambda_j / n) / (lambda_i -
    lambda_j) at generation 0, and every generation's sampling turns them further), so the variance along a
    collapsed axis picks up angle^2 times a large eigenvalue and stops following the recursion there.

    ``extra`` separates the ways the measurement can leave the prediction: ``one_step`` applies the
    recursion to the measured eigenvalues of the generation before (what a single generation does, free of
    the sampling error earlier generations passed on); ``weight_error`` is max |W - W_opt|, W_opt =
    M (M + sigma^2 I)^-1 for the second moment M of the data the layer was trained on (how well it trained);
    ``through_trained_w`` is what the trained W itself implies: the eigenvalues of beta Sigma_0 + (1 - beta)
    W (M + sigma^2 I) W^T, its errors included. ``gain``: the eigenvalues of W's symmetric part.
    """
    from accelerate import Accelerator

    from chain_of_diffusion.config import TrainConfig
    from chain_of_diffusion.processes import DenoisingAutoencoder
    from chain_of_diffusion.seeding import generator
    from chain_of_diffusion.train import TrainData, train_denoiser

    d = len(eigenvalues)
    lam0 = np.asarray(eigenvalues, dtype=np.float64)
    dae = DenoisingAutoencoder(sigma)
    accelerator = Accelerator(cpu=True)
    # log and checkpoint intervals beyond the run: nothing is written, the chain keeps no state on disk
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, lr_warmup_steps=10, ema_decay=0.99,
                      checkpoint_every=10**9, log_every=10**9)
    empty = torch.zeros(1, 1)
    keep = n - round(beta * n)  # rows made by the model; the rest are fresh real data
    x = gaussian_data(eigenvalues, n, generator(seed, "real", 0))
    rank = np.argsort(np.argsort(lam0))  # where each lambda0 sits in ascending order

    def spectrum(sym: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvalsh(sym.double())[rank]

    def second_moment(x: torch.Tensor) -> torch.Tensor:
        return x.double().T @ x.double() / x.shape[0]

    eig, axes, gains, weights, weight_errors, through_w = [], [], [], [], [], []
    product, norms = torch.eye(d), [1.0]
    for g in range(generations):
        m = second_moment(x)
        eig.append(spectrum(m))
        axes.append(torch.diagonal(m))
        net = LinearDenoiser(d)
        # torch's default init, drawn from this chain's seed rather than the global generator
        torch.nn.init.uniform_(net.linear.weight, -d**-0.5, d**-0.5, generator=generator(seed, "init", g))
        data = TrainData(x0=x, caption_index=torch.zeros(n, dtype=torch.long), caption_embeddings=empty,
                         empty_embedding=empty)
        with tempfile.TemporaryDirectory() as ckpt:
            train_denoiser(net, dae, data, cfg, seed=seed * 1000 + g, accelerator=accelerator,
                           checkpoint_dir=ckpt, adapter=lambda m: m)
        w = net.linear.weight.detach()
        w64, eye = w.double(), torch.eye(d, dtype=torch.float64)
        weight_errors.append(float((w64 - m @ torch.linalg.inv(m + sigma**2 * eye)).abs().max()))
        # what this W does to its own training data, before the noise and the fresh rows are sampled
        through_w.append(spectrum(beta * torch.diag(torch.as_tensor(lam0))
                                  + (1 - beta) * w64 @ (m + sigma**2 * eye) @ w64.T))
        gains.append(spectrum((w64 + w64.T) / 2))
        weights.append(w)
        product = w @ product
        norms.append(float(torch.linalg.matrix_norm(product, 2)))
        rows = torch.randperm(n, generator=generator(seed, "rows", g))[:keep]
        # one generator per row, fresh every generation: the sampler's default noise is the same at every
        # call, and noise repeated across generations would add up coherently instead of independently
        gens = [generator(seed, "sample", g, i) for i in range(keep)]
        made = dae.sample(net, x[rows], empty.expand(keep, 1), empty, steps=1, generators=gens)
        x = torch.cat([made, gaussian_data(eigenvalues, n - keep, generator(seed, "real", g + 1))])
    m = second_moment(x)
    eig.append(spectrum(m))
    axes.append(torch.diagonal(m))
    measured = torch.stack(eig).numpy()
    predicted = linear_dae_prediction(eigenvalues, sigma, beta, generations)
    before = measured[:-1]
    extra = {
        "beta": beta, "sigma": sigma, "n": n, "steps": steps,
        "one_step": np.vstack([lam0, beta * lam0 + (1 - beta) * before**2 / (before + sigma**2)]),
        "through_trained_w": np.vstack([lam0, torch.stack(through_w).numpy()]),
        "axis_variances": torch.stack(axes).numpy(),
        "weight_error": np.array(weight_errors),
        "weights": torch.stack(weights).double().numpy(),  # (generations, d, d): W of each generation
        "gain": torch.stack(gains).numpy(),
        "predicted_gain": predicted[:-1] / (predicted[:-1] + sigma**2),
        "gain_floor": beta * lam0 / (beta * lam0 + sigma**2),
        "fixed_point": linear_dae_fixed_point(lam0, sigma, beta),
    }
    if beta == 0:
        # x_g's linear part in x_0 is W_g...W_1; per axis the optimal chain's is prod lambda_k / (lambda_k +
        # sigma^2) = lambda_g / lambda_0, each factor at most r = lambda_max / (lambda_max + sigma^2)
        r = lam0.max() / (lam0.max() + sigma**2)
        extra.update(operator_norm=np.array(norms), predicted_operator_norm=(predicted / lam0).max(1),
                     operator_norm_bound=r ** np.arange(generations + 1))
    return Check("linear_dae", np.arange(generations + 1), [f"lambda0={v:g}" for v in eigenvalues],
                 measured, predicted, None, extra)
