#!/usr/bin/env python
"""The theory checks of issue 12: ``python scripts/theory.py [--seeds N] [--out DIR] [--only NAME,...]``.

Runs each check of :mod:`chain_of_diffusion.theory` for seeds 0..N-1, prints a markdown table per check
(generation, measured: mean ± std over the seeds, predicted) and the check's summary lines, and writes
one figure per check to ``DIR/images/theory_<name>.png``. docs/theory.md holds the output of the default
run and the derivations.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

CHECKS = ("gaussian", "regression", "categorical", "linear_dae")
DAE_BETAS = (0.0, 0.5)


def run_check(name: str, seed: int) -> list:
    """One seed of check ``name``, at the sizes docs/theory.md reports (a list: the DAE has one per beta)."""
    from chain_of_diffusion import theory

    if name == "gaussian":
        return [theory.gaussian_refit(n=20, generations=30, chains=100_000, seed=seed)]
    if name == "regression":
        return [theory.regression_chain(d=10, T=50, sigma=1.0, generations=10, chains=4000, seed=seed)]
    if name == "categorical":
        return [theory.categorical_chain(n=50, alphas=(0.0, 0.05, 0.2), generations=200, chains=20_000,
                                         seed=seed)]
    return [theory.linear_dae_chain(beta=beta, generations=6, seed=seed) for beta in DAE_BETAS]


def _rows(generations: np.ndarray, most: int = 11) -> np.ndarray:
    """At most ``most`` evenly strided generations, the last always among them."""
    stride = max(1, int(np.ceil((len(generations) - 1) / (most - 1))))
    picked = list(range(0, len(generations), stride))
    return np.array(picked if picked[-1] == len(generations) - 1 else picked + [len(generations) - 1])


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def table(runs: list) -> str:
    """Markdown: one row per (thinned) generation, per column the measured mean ± std over seeds and the
    predicted value."""
    first = runs[0]
    measured = np.stack([r.measured for r in runs])  # (seeds, G, Q)
    mean = measured.mean(0)
    std = measured.std(0, ddof=1) if len(runs) > 1 else None
    # a "|" inside a cell (E||w - w*||^2) would end the cell
    head = ["g"] + [f"{c} {what}".replace("|", "\\|") for c in first.columns
                    for what in ("measured", "predicted")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i in _rows(first.generations):
        cells = [str(first.generations[i])]
        for j in range(len(first.columns)):
            spread = f" ± {_fmt(std[i, j])}" if std is not None else ""
            cells += [_fmt(mean[i, j]) + spread, _fmt(first.predicted[i, j])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def deviation(runs: list) -> str:
    """How far the mean over seeds is from the prediction, in standard errors of that mean (the chains of
    all seeds pooled); only for checks whose seeds are many independent chains."""
    if runs[0].stderr is None:
        return ""
    mean = np.stack([r.measured for r in runs]).mean(0)
    se = np.sqrt(np.stack([r.stderr**2 for r in runs]).sum(0)) / len(runs)
    z = np.abs(mean - runs[0].predicted)[1:] / se[1:]  # generation 0 is the real data, identical by design
    parts = [f"{c}: {z[:, j].max():.2f}" for j, c in enumerate(runs[0].columns)]
    return "largest |measured - predicted| over generations, in standard errors of the mean: " + (
        ", ".join(parts))


def _ms(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    return _fmt(values.mean()) + (f" ± {_fmt(values.std(ddof=1))}" if len(values) > 1 else "")


def summary(runs: list) -> list[str]:
    """The check's own numbers beyond the table: slopes, fixed points, bounds."""
    first, ex = runs[0], runs[0].extra
    if first.name == "gaussian":
        last = first.generations[-1]
        med = [r.extra["median sigma^2 (unbiased)"][-1] for r in runs]
        return [f"per-generation drift of E log sigma^2: predicted {first.predicted[1, 1]:.5f} "
                f"(psi((n-1)/2) + log(2/(n-1)), n = {ex['n']}), measured (E log sigma^2_{last}) / {last} = "
                f"{_ms([r.measured[-1, 1] / last for r in runs])}",
                f"median sigma^2 of the unbiased chains at generation {last}: {_ms(med)} "
                f"(exp of the predicted E log sigma^2: {np.exp(first.predicted[-1, 1]):.4f}); "
                "their mean stays 1"]
    if first.name == "regression":
        return [f"slope of E||w_g - w*||^2 per generation: measured {_ms([r.extra['slope'] for r in runs])} "
                f"(standard error of one seed's slope {ex['slope_se']:.4f}), "
                f"predicted sigma^2 d / (T - d - 1) = {ex['predicted_slope']:.4f} "
                f"(d = {ex['d']}, T = {ex['T']})"]
    if first.name == "categorical":
        last = len(first.generations) - 1
        out = [f"fixed point e* at {c}: {ex['fixed_point'][a]:.5f}; at g = {last} predicted "
               f"{first.predicted[-1, j]:.5f}, measured {_ms([r.measured[-1, j] for r in runs])}"
               for j, (c, a) in enumerate(zip(first.columns, ex["fixed_point"]))]
        freq = np.stack([r.extra["vertex_frequencies"] for r in runs]).mean(0)
        out += [f"alpha=0: share of chains absorbed at a vertex by g = {last}: "
                f"{_ms([r.extra['absorbed'] for r in runs])}; which vertex (mean over seeds) "
                f"{np.array2string(freq, precision=3)} vs p0 {np.array2string(ex['p0'], precision=3)}"]
        return out
    beta = ex["beta"]
    rel = np.stack([r.measured[1:] / r.extra["one_step"][1:] - 1 for r in runs])
    resolved = first.extra["predicted_gain"] >= 0.1  # see docs/theory.md: below, the training error dominates
    through = np.stack([r.measured[1:] / r.extra["through_trained_w"][1:] - 1 for r in runs])
    out = [f"beta = {beta:g}, sigma = {ex['sigma']:g}, n = {ex['n']}, {ex['steps']} steps per generation",
           f"max |W - W_opt| per generation (mean over seeds): "
           f"{np.array2string(np.stack([r.extra['weight_error'] for r in runs]).mean(0), precision=4)}",
           "one generation from the measured eigenvalues, |measured / recursion - 1|, largest over seeds "
           "and generations with predicted gain >= 0.1: "
           f"{np.array2string(np.abs(np.where(resolved, rel, 0)).max((0, 1)), precision=3)} per axis",
           "one generation through the trained W, |measured / eig(beta Sigma0 + (1 - beta) W (M + sigma^2 I) "
           "W^T) - 1|, largest over seeds and all generations: "
           f"{np.array2string(np.abs(through).max((0, 1)), precision=3)} per axis",
           f"trained gain (eigenvalues of W) at the last generation: "
           f"{np.array2string(np.stack([r.extra['gain'][-1] for r in runs]).mean(0), precision=4)}, "
           f"predicted {np.array2string(ex['predicted_gain'][-1], precision=4)}"]
    if beta > 0:
        floor = np.stack([r.measured[1:].min(0) for r in runs]).min(0)
        gains = np.stack([r.extra["gain"] for r in runs]).min((0, 1))
        out += [f"fixed point lambda*: {np.array2string(ex['fixed_point'], precision=4)}; "
                f"floor beta lambda0: {np.array2string(beta * np.asarray(first.predicted[0]), precision=4)}; "
                "smallest measured eigenvalue over generations >= 1 and seeds: "
                f"{np.array2string(floor, precision=4)}",
                "gain floor beta lambda0 / (beta lambda0 + sigma^2): "
                f"{np.array2string(ex['gain_floor'], precision=4)}; smallest trained gain: "
                f"{np.array2string(gains, precision=4)}"]
    else:
        norms = np.stack([r.extra["operator_norm"] for r in runs])
        low = int(np.argmin(first.predicted[0]))
        series = {"measured": np.stack([r.measured[1:, low] for r in runs]).mean(0)}
        for k in ("one_step", "through_trained_w", "axis_variances"):
            series[k] = np.stack([r.extra[k][1:, low] for r in runs]).mean(0)
        series = {k: np.array2string(v, precision=2) for k, v in series.items()}
        out += [f"smallest eigenvalue (lambda0 = {first.predicted[0, low]:g}), generations "
                f"1..{len(norms[0]) - 1}, mean over seeds: measured {series['measured']}; recursion from "
                f"lambda0 {np.array2string(first.predicted[1:, low], precision=2)}; recursion from the "
                f"measured generation before {series['one_step']}; through the trained W "
                f"{series['through_trained_w']}; variance along the real axis instead of the eigenvalue "
                f"{series['axis_variances']}"]
        out += ["end-to-end operator norm ||W_g ... W_1||_2: " + ", ".join(
            f"g={g}: {_ms(norms[:, g])} (predicted {ex['predicted_operator_norm'][g]:.4f}, bound "
            f"{ex['operator_norm_bound'][g]:.4f})" for g in range(1, norms.shape[1]))]
    return out


def figure(name: str, runs_by_part: list[list], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = len(runs_by_part) + (1 if name == "linear_dae" else 0) + (1 if name == "gaussian" else 0)
    fig = Figure(figsize=(5.2 * panels, 4.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]

    def draw(ax, runs, cols, log=False, label=lambda c: c, loc="best", ncol=1, anchor=None):
        measured = np.stack([r.measured for r in runs])
        g = runs[0].generations
        for k, j in enumerate(cols):
            color = f"C{k}"
            lo, hi = measured[:, :, j].min(0), measured[:, :, j].max(0)
            ax.plot(g, measured[:, :, j].mean(0), "o-", ms=3, color=color, label=label(runs[0].columns[j]))
            if len(runs) > 1:
                ax.fill_between(g, lo, hi, color=color, alpha=0.2, lw=0)
            ax.plot(g, runs[0].predicted[:, j], "--", color="black", lw=1)
        ax.set_xlabel("generation")
        if log:
            ax.set_yscale("log")
        ax.plot([], [], "--", color="black", lw=1, label="predicted")
        ax.legend(fontsize=8, loc=loc, ncol=ncol, bbox_to_anchor=anchor)

    if name == "gaussian":
        runs = runs_by_part[0]
        draw(axes[0], runs, [0, 2])
        axes[0].set_title("E sigma^2: unbiased (martingale) vs MLE")
        draw(axes[1], runs, [1])
        axes[1].set_title("E log sigma^2 (unbiased): drifts down")
    elif name == "regression":
        draw(axes[0], runs_by_part[0], [0])
        axes[0].set_title("OLS on its own labels: excess risk")
    elif name == "categorical":
        draw(axes[0], runs_by_part[0], [0, 1, 2])
        for a in runs_by_part[0][0].extra["fixed_point"].values():
            axes[0].axhline(a, color="grey", lw=0.5, ls=":")
        axes[0].set_title("E||p_g - p0||^2 (dotted: fixed points e*)")
    else:
        for ax, runs in zip(axes, runs_by_part):
            beta = runs[0].extra["beta"]
            cols = list(range(len(runs[0].columns)))
            # with real data the curves leave a gap between the lambda0 = 1 and 0.25 curves for the legend
            draw(ax, runs, cols, log=True, loc="center" if beta else "best", ncol=2 if beta else 1,
                 anchor=(0.5, 0.33) if beta else None)
            ax.set_title(f"linear DAE, beta = {beta:g}: eigenvalues")
            if beta > 0:
                for floor in beta * runs[0].predicted[0]:
                    ax.axhline(floor, color="grey", lw=0.5, ls=":")
                ax.set_title(f"linear DAE, beta = {beta:g}: eigenvalues (dotted: beta lambda0)")
            else:
                # the variance along the smallest real axis, not an eigenvalue: it stops falling where the
                # sample's slightly turned eigenvectors carry in a little of the large eigenvalues
                low = int(np.argmin(runs[0].predicted[0]))
                axis = np.stack([r.extra["axis_variances"][:, low] for r in runs]).mean(0)
                ax.plot(runs[0].generations, axis, ":", color="C2", lw=1, label="its variance along the axis")
                ax.legend(fontsize=8)
        zero = runs_by_part[0]
        norms = np.stack([r.extra["operator_norm"] for r in zero])
        ax = axes[-1]
        ax.plot(zero[0].generations, norms.mean(0), "o-", ms=3, label="measured ||W_g...W_1||")
        ax.plot(zero[0].generations, zero[0].extra["predicted_operator_norm"], "--", color="black", lw=1,
                label="predicted")
        ax.plot(zero[0].generations, zero[0].extra["operator_norm_bound"], ":", color="red",
                label="bound r^g")
        ax.set_title("beta = 0: end-to-end operator norm")
        ax.set_xlabel("generation")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per check (default 3)")
    p.add_argument("--out", default="docs", help="figures go to OUT/images/theory_<name>.png (default: docs)")
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown or args.seeds < 1:
        print(f"theory.py: error: unknown check {unknown} (choose from {CHECKS})" if unknown
              else "theory.py: error: --seeds must be >= 1", file=sys.stderr)
        return 2
    started = time.time()
    for name in names:
        t0 = time.time()
        per_seed = [run_check(name, seed) for seed in range(args.seeds)]
        parts = [[seed_runs[k] for seed_runs in per_seed] for k in range(len(per_seed[0]))]
        print(f"\n## {name} ({args.seeds} seed{'s' * (args.seeds > 1)}, {time.time() - t0:.1f} s)\n")
        for runs in parts:
            print(table(runs) + "\n")
            for line in [deviation(runs), *summary(runs)]:
                if line:
                    print(f"- {line}")
            print()
        path = Path(args.out) / "images" / f"theory_{name}.png"
        figure(name, parts, path)
        print(f"figure: {path}")
    print(f"\nwall time: {time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
