"""Compare finished chains: one plot per metric with a curve per variant (mean and min-max band
over seeds), a markdown table of the last generation, as the mitigation papers print them, the
change from generation 0 within each seed, and each variant's image rows (its first run).

A run's variant is the name of its folder, or of the parent folder when the run folder is named
``seed<N>`` (the layout ``scripts/sweep.py`` writes: ``<out>/<variant>/seed<N>/``).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

from chain_of_diffusion.metrics.report import BOOKKEEPING, numeric_metrics


def variant_of(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    return run_dir.parent.name if re.fullmatch(r"seed\d+", run_dir.name) else run_dir.name


def load_runs(run_dirs: list[Path]) -> dict[str, list[list[dict]]]:
    """variant -> one list of metrics rows (by generation) per run."""
    runs: dict[str, list[list[dict]]] = defaultdict(list)
    for run_dir in run_dirs:
        path = Path(run_dir) / "metrics.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no metrics.jsonl (not a finished chain)")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        runs[variant_of(Path(run_dir))].append(rows)
    return dict(runs)


def metric_names(runs: dict[str, list[list[dict]]]) -> list[str]:
    """The quality metrics any run reports, in first-seen order."""
    all_rows = [row for variant_runs in runs.values() for rows in variant_runs for row in rows]
    return [name for name in numeric_metrics(all_rows) if name not in BOOKKEEPING]


def _stats(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, std, min, max) of finite values; NaNs where there are none."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return (math.nan,) * 4
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return mean, std, min(finite), max(finite)


def curves(runs: dict[str, list[list[dict]]], metric: str) -> dict[str, list[tuple[int, float, float, float]]]:
    """variant -> [(generation, mean, min, max)] over its seeds."""
    out = {}
    for variant, variant_runs in runs.items():
        by_gen: dict[int, list[float]] = defaultdict(list)
        for rows in variant_runs:
            for row in rows:
                if metric in row:
                    by_gen[row["generation"]].append(row[metric])
        points = []
        for g in sorted(by_gen):
            mean, _, lo, hi = _stats(by_gen[g])
            points.append((g, mean, lo, hi))
        out[variant] = points
    return out


def last_generation_table(runs: dict[str, list[list[dict]]], metrics: list[str]) -> str:
    """Markdown: one row per variant, mean ± std over seeds of each metric at its last generation."""
    header = "| variant | seeds | generation | " + " | ".join(metrics) + " |"
    lines = [header, "|" + "---|" * (3 + len(metrics))]
    for variant, variant_runs in runs.items():
        last = [rows[-1] for rows in variant_runs if rows]
        if not last:
            continue
        cells = []
        for metric in metrics:
            mean, std, _, _ = _stats([row.get(metric) for row in last])
            cells.append("-" if math.isnan(mean) else f"{mean:.3g} ± {std:.2g}")
        gens = sorted({row["generation"] for row in last})
        lines.append(f"| {variant} | {len(last)} | {'/'.join(map(str, gens))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def change_table(runs: dict[str, list[list[dict]]], metrics: list[str]) -> str:
    """Markdown: one row per variant, mean ± std over seeds of (last generation - generation 0) of
    each metric, taken within each seed, so a reference that depends on the seed cancels."""
    header = "| variant | seeds | " + " | ".join(f"Δ {m}" for m in metrics) + " |"
    lines = [header, "|" + "---|" * (2 + len(metrics))]
    for variant, variant_runs in runs.items():
        complete = [rows for rows in variant_runs if len(rows) > 1]
        if not complete:
            continue
        cells = []
        for metric in metrics:
            deltas = [rows[-1][metric] - rows[0][metric] for rows in complete
                      if isinstance(rows[-1].get(metric), (int, float)) and isinstance(rows[0].get(metric), (int, float))]
            mean, std, _, _ = _stats(deltas)
            cells.append("-" if math.isnan(mean) else f"{mean:+.3g} ± {std:.2g}")
        lines.append(f"| {variant} | {len(complete)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def image_rows(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """``grids_<variant>.png``: the first run of each variant, its real row on top (the report's
    ``reference/grid.png``) and below it each generation's rows (``gen_XX/grid.png``), a gap between."""
    from PIL import Image

    first: dict[str, Path] = {}
    for run_dir in run_dirs:
        first.setdefault(variant_of(Path(run_dir)), Path(run_dir))
    paths = []
    for variant, run_dir in first.items():
        parts = [run_dir / "reference" / "grid.png", *sorted(run_dir.glob("gen_*/grid.png"))]
        images = [Image.open(p).convert("RGB") for p in parts if p.is_file()]
        if len(images) < 2:
            continue
        gap = 6
        sheet = Image.new("RGB", (max(im.width for im in images), sum(im.height + gap for im in images) - gap), "white")
        y = 0
        for im in images:
            sheet.paste(im, (0, y))
            y += im.height + gap
        path = Path(out_dir) / f"grids_{variant}.png"
        sheet.save(path)
        paths.append(path)
    return paths


def per_generation_table(runs: dict[str, list[list[dict]]], metrics: list[str]) -> str:
    """Markdown: one row per (variant, generation), mean ± std over the seeds that reached it."""
    lines = ["| variant | generation | seeds | " + " | ".join(metrics) + " |", "|" + "---|" * (3 + len(metrics))]
    for variant, variant_runs in runs.items():
        by_gen: dict[int, list[dict]] = defaultdict(list)
        for rows in variant_runs:
            for row in rows:
                by_gen[row["generation"]].append(row)
        for g in sorted(by_gen):
            cells = []
            for metric in metrics:
                mean, std, _, _ = _stats([row.get(metric) for row in by_gen[g]])
                cells.append("-" if math.isnan(mean) else f"{mean:.3g} ± {std:.2g}")
            lines.append(f"| {variant} | {g} | {len(by_gen[g])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(runs: dict[str, list[list[dict]]], out_dir: Path) -> list[Path]:
    """One PNG per metric: a line per variant (mean) with its min-max band over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric in metric_names(runs):
        fig = Figure(figsize=(5.5, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for variant, points in curves(runs, metric).items():
            if not points:
                continue
            gens = [p[0] for p in points]
            line = ax.plot(gens, [p[1] for p in points], marker="o", label=variant)[0]
            ax.fill_between(gens, [p[2] for p in points], [p[3] for p in points], alpha=0.2,
                            color=line.get_color())
        ax.set_xlabel("generation")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / f"{metric}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def compare(run_dirs: list[Path], out_dir: Path, metrics: list[str] | None = None) -> Path:
    """Write the plots and ``comparison.md`` into ``out_dir``; return the markdown path.

    ``metrics`` (default: all a run reports) selects the table's columns; with it the markdown also
    gets a table of every generation, the view a chain's trend needs (straightness, few-step quality).
    """
    runs = load_runs(run_dirs)
    known = metric_names(runs)
    unknown = [m for m in metrics or [] if m not in known]
    if unknown:
        raise ValueError(f"no run reports {', '.join(unknown)} (reported: {', '.join(known)})")
    plots = plot_comparison(runs, out_dir) + image_rows(run_dirs, out_dir)
    md = Path(out_dir) / "comparison.md"
    images = "\n".join(f"![{p.stem}]({p.name})" for p in plots)
    text = (f"# Comparison of {sum(len(r) for r in runs.values())} runs\n\nLast generation, mean ± std over seeds:\n\n"
            f"{last_generation_table(runs, metrics or known)}\n"
            f"Change from generation 0 to the last, within each seed, mean ± std over seeds:\n\n"
            f"{change_table(runs, metrics or known)}\n")
    if metrics:
        text += f"Every generation, mean ± std over seeds:\n\n{per_generation_table(runs, metrics)}\n"
    md.write_text(text + images + "\n")
    return md
