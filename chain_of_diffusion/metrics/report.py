"""The run report (matplotlib, Agg canvas): metric curves and per-generation image grids in one self-contained ``report.html``.

Reads only the public run-directory files (``config.yaml``, ``metrics.jsonl``, ``reference/grid.png``,
``gen_XX/grid.png``) and writes ``report_files/*.png`` and ``report.html``; the page uses relative
paths, so it opens from disk with no server and survives moving the run directory.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from urllib.parse import quote

import torch
from PIL import Image
from torch import Tensor

from chain_of_diffusion.runs import atomic_replace, read_json

REPORT_NAME = "report.html"
FILES_DIR = "report_files"
REFERENCE_SUFFIX = "_reference"
# Counts in metrics.jsonl that describe the run, not the samples' quality: the terminal table and
# the comparison of runs leave them out.
BOOKKEEPING = ("num_skipped_files", "num_train_images")
# Display width of every grid in the page, so 16x16 images are visible and rows line up.
GRID_DISPLAY_WIDTH_PX = 768
_GEN_DIR = re.compile(r"^gen_(\d+)$")


def make_grid_image(images: Tensor, nrow: int, scale: int = 1, padding: int = 2) -> Image.Image:
    """Tile images into one RGB picture.

    Args:
        images: (N, C, H, W) in [-1, 1], C in {1, 3}.
        nrow: images per row.
        scale: integer nearest-neighbour upscaling, so tiny images stay crisp.
    """
    from torchvision.utils import make_grid

    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"make_grid_image needs (N, C, H, W) images with N >= 1, got {tuple(images.shape)}")
    x = (images.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * 0.5
    grid = make_grid(x, nrow=nrow, padding=padding, pad_value=1.0)  # (3, H', W') in [0, 1]
    array = (grid * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(array)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return image


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def numeric_metrics(rows: list[dict]) -> list[str]:
    """Names of the metrics with a finite number in at least one row, in first-seen order
    (``generation`` and ``*_reference`` excluded: they are the x axis and the dashed lines)."""
    names: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key == "generation" or key.endswith(REFERENCE_SUFFIX) or key in names:
                continue
            if _is_number(value):
                names.append(key)
    return names


# which way is better, for the headline and the curves' axes (metrics not listed have no better side here)
LOWER_IS_BETTER = ("fd_", "fid_", "kid_")  # prefixes: distances to the real data
HIGHER_IS_BETTER = ("caption_accuracy", "precision", "recall", "density", "coverage", "clip_score",
                    "mode_share", "modes_hit")


def direction(name: str) -> str | None:
    """"lower" or "higher" (is better) for the metric ``name``; None where neither is."""
    if name.startswith(LOWER_IS_BETTER) and not name.endswith("_std"):
        return "lower"
    if name in HIGHER_IS_BETTER:
        return "higher"
    return None


def headline_names(rows: list[dict]) -> list[str]:
    """The chain's main metrics, in this order where reported: the Fréchet distance in use, caption
    adherence (labels), precision and recall."""
    names = numeric_metrics(rows)
    fd = [n for n in names if n.startswith(("fd_", "fid_")) and "_" not in n.removeprefix("fd_").removeprefix("fid_")]
    return fd[:1] + [n for n in ("caption_accuracy", "precision", "recall") if n in names]


def curve_names(rows: list[dict]) -> list[str]:
    """The metrics worth a curve: the headline first, then the others; no bookkeeping counts and no
    metric that never moved (memorization at 0 in every generation)."""
    names = [n for n in numeric_metrics(rows) if n not in BOOKKEEPING and n != "real_share"]  # the mix's, not quality
    moving = [n for n in names if len(rows) < 2 or len({r.get(n) for r in rows if _is_number(r.get(n))}) > 1]
    head = [n for n in headline_names(rows) if n in moving]
    return head + [n for n in moving if n not in head]


def _change_sentence(name: str, first: float, last: float, gens: int, reference) -> str:
    better = direction(name)
    moved = "rose" if last > first else "fell" if last < first else "stayed"
    verdict = ""
    if better and last != first:
        verdict = ": better" if (last < first) == (better == "lower") else ": worse"
    ref = f"; real data: {reference:.4g}" if _is_number(reference) else ""
    how = f"{better} is better" if better else "no better side"
    span = f"from {first:.4g} at generation 0 to {last:.4g} at generation {gens}" if moved != "stayed" else \
        f"at {first:.4g} from generation 0 to {gens}"
    return f"{name} {moved} {span} ({how}{ref}){verdict}."


def _headline(rows: list[dict]) -> str:
    """The panel at the top: each main metric's last value, its direction and what changed since generation 0."""
    names = headline_names(rows)
    if not rows or not names:
        return ""
    last_gen = rows[-1].get("generation", len(rows) - 1)
    cards, sentences = [], []
    for name in names:
        values = [r[name] for r in rows if _is_number(r.get(name))]
        refs = [r[name + REFERENCE_SUFFIX] for r in rows if _is_number(r.get(name + REFERENCE_SUFFIX))]
        better = direction(name)
        arrow = {"lower": "&#8595; lower is better", "higher": "&#8593; higher is better"}.get(better, "")
        cards.append(f'<div class="card"><div class="name">{html.escape(name)}</div>'
                     f'<div class="value">{values[-1]:.4g}</div><div class="dir">{arrow}</div>'
                     + (f'<div class="ref">real data: {refs[-1]:.4g}</div>' if refs else "") + "</div>")
        sentences.append(_change_sentence(name, values[0], values[-1], last_gen, refs[-1] if refs else None))
    items = "".join(f"<li>{html.escape(s)}</li>" for s in sentences)
    return (f'<div id="headline"><h2>Generation {last_gen} against generation 0</h2>'
            f'<div class="cards">{"".join(cards)}</div><ul>{items}</ul></div>')


def _run_facts(run_dir: Path, rows: list[dict]) -> str:
    """Date, commit, versions, seed, device and the seconds per stage, from env.json, config.yaml, state.json."""
    import datetime

    def read(name: str) -> dict:
        try:
            return json.loads((run_dir / name).read_text())
        except (OSError, ValueError):
            return {}

    env, state = read("env.json"), read("state.json")
    facts = []
    stamp = run_dir / "metrics.jsonl"
    if stamp.is_file():
        facts.append(("updated", datetime.datetime.fromtimestamp(stamp.stat().st_mtime).strftime("%Y-%m-%d %H:%M")))
    seed = re.search(r"^seed: (\d+)", (run_dir / "config.yaml").read_text(), re.M) if (run_dir / "config.yaml").is_file() else None
    if seed:
        facts.append(("seed", seed.group(1)))
    if env:
        facts.append(("device", f"{env.get('device')} x {env.get('num_processes', 1)} process(es)"))
        facts.append(("commit", (env.get("git_commit") or "unknown")[:12]))
        packages = env.get("packages", {})
        facts.append(("versions", ", ".join(f"{k} {packages[k]}" for k in ("torch", "diffusers", "peft", "accelerate")
                                           if k in packages) + f", python {env.get('python', '?')}"))
    per_stage: dict[str, float] = {}
    for stages in state.get("seconds", {}).values():
        for stage, seconds in stages.items():
            per_stage[stage] = per_stage.get(stage, 0.0) + seconds
    if per_stage:
        facts.append(("seconds per stage, all generations", ", ".join(f"{k} {v:.0f}" for k, v in per_stage.items())))
    if env.get("num_processes", 1) > 1 and (idle := _idle_shares(run_dir)):
        facts.append(("processes idle (waiting for the others), all generations",
                      ", ".join(f"{k} {v:.0%}" for k, v in idle.items())))
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    return f'<table class="facts">{cells}</table>' if facts else ""


def _idle_shares(run_dir: Path) -> dict[str, float]:
    """Per stage, the share of all processes' time spent waiting for the others, over every
    generation's ``timing.json`` (written by the chain)."""
    work: dict[str, float] = {}
    wait: dict[str, float] = {}
    for path in sorted(run_dir.glob("gen_*/timing.json")):
        for stage, t in read_json(path, {}).items():
            work[stage] = work.get(stage, 0.0) + sum(t.get("work_s", []))
            wait[stage] = wait.get(stage, 0.0) + sum(t.get("wait_s", []))
    return {k: wait[k] / (work[k] + wait[k]) for k in work if work[k] + wait[k] > 0}


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "metric"


def plot_metric_curves(rows: list[dict], out_dir: Path, names: list[str] | None = None) -> list[Path]:
    """One PNG per numeric metric: value against generation, with a dashed line at
    ``<metric>_reference`` when the rows carry one (e.g. real train vs held-out).

    Args:
        rows: the objects of ``metrics.jsonl``, each with an integer ``generation``.
        out_dir: folder for ``<metric>.png`` (created).

    Returns:
        The written paths, in metric order.
    """
    # A bare Figure with the Agg canvas: no pyplot, so no global backend switch and no figure
    # registry to leak into (the caller may be a notebook with its own backend).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    rows = sorted((r for r in rows if _is_number(r.get("generation"))), key=lambda r: r["generation"])
    paths = []
    for name in numeric_metrics(rows) if names is None else names:
        points = [(r["generation"], r[name]) for r in rows if _is_number(r.get(name))]
        # The reference is a property of the chain, not of a generation: the latest one wins.
        refs = [r[name + REFERENCE_SUFFIX] for r in rows if _is_number(r.get(name + REFERENCE_SUFFIX))]
        fig = Figure(figsize=(5.0, 3.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot([g for g, _ in points], [v for _, v in points], marker="o", label=name)
        if refs:
            ax.axhline(refs[-1], linestyle="--", color="grey", label="real reference")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("generation")
        ax.set_ylabel(name)
        better = direction(name)
        ax.set_title(f"{name} ({better} is better)" if better else name)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        path = out_dir / f"{_safe_filename(name)}.png"
        with atomic_replace(path) as tmp:
            fig.savefig(tmp, format="png")
        paths.append(path)
    return paths


def read_metrics(path: Path) -> list[dict]:
    """Rows of a ``metrics.jsonl``; missing file -> []. A torn last line (writer killed) is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return sorted(rows, key=lambda r: r.get("generation", -1) if _is_number(r.get("generation")) else -1)


def _grid_captions(run_dir: Path) -> list[str]:
    """The captions of the grid's columns, from the requests the engine rendered (first row)."""
    path = run_dir / "reference" / "grid_requests.json"
    if not path.is_file():
        return []
    try:
        requests = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    seen: list[str] = []
    for request in requests:
        if request.get("text") in seen:
            break
        seen.append(request.get("text", ""))
    return seen


def _generation_grids(run_dir: Path) -> list[tuple[str, str]]:
    """(label, relative path) of the grid rows: ``real`` first, then every generation in order."""
    grids = []
    if (run_dir / "reference" / "grid.png").is_file():
        grids.append(("real", "reference/grid.png"))
    gens = []
    for child in run_dir.iterdir() if run_dir.is_dir() else []:
        match = _GEN_DIR.match(child.name)
        if match and (child / "grid.png").is_file():
            gens.append((int(match.group(1)), child.name))
    for g, name in sorted(gens):
        grids.append((f"generation {g}", f"{name}/grid.png"))
    return grids


def _format_cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _metrics_table(rows: list[dict]) -> str:
    columns = ["generation"]
    for row in rows:
        columns += [k for k in row if k not in columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(_format_cell(row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return (f'<div class="scroll"><table class="metrics">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
            "</tbody>\n</table></div>")


def _img(rel_path: str, alt: str, css_class: str) -> str:
    src = html.escape(quote(rel_path), quote=True)
    return f'<img class="{css_class}" src="{src}" alt="{html.escape(alt, quote=True)}">'


_STYLE = f"""
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f2f2f2; }}
.curves img {{ margin: 0.3em; border: 1px solid #eee; }}
.grid-row {{ margin-bottom: 1em; }}
.grid-row h3 {{ margin: 0.2em 0; font-size: 1em; }}
img.grid {{ width: {GRID_DISPLAY_WIDTH_PX}px; image-rendering: pixelated; image-rendering: crisp-edges; }}
pre {{ background: #f7f7f7; padding: 1em; overflow-x: auto; }}
.scroll {{ overflow-x: auto; max-width: 100%; }}
table.metrics th {{ white-space: normal; word-break: break-word; max-width: 7em; font-size: 0.8em; }}
table.metrics td {{ font-size: 0.85em; }}
table.facts th {{ text-align: left; }}
#headline .cards {{ display: flex; flex-wrap: wrap; gap: 0.8em; }}
#headline .card {{ border: 1px solid #ccc; border-radius: 6px; padding: 0.5em 1em; min-width: 10em; }}
#headline .value {{ font-size: 1.8em; font-weight: bold; }}
#headline .name, #headline .dir, #headline .ref {{ font-size: 0.85em; color: #555; }}
.captions {{ display: flex; width: {GRID_DISPLAY_WIDTH_PX}px; }}
.captions span {{ flex: 1 1 0; font-size: 0.7em; text-align: center; overflow-wrap: anywhere; padding: 0 2px; }}
"""


def render_report(
    run_dir: Path, rows: list[dict], curves: list[Path], grids: list[tuple[str, str]], config_text: str
) -> str:
    """The HTML page as a string (paths in ``curves`` are made relative to ``run_dir``)."""
    title = f"Chain of Diffusion report: {run_dir.resolve().name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _run_facts(run_dir, rows),
        _headline(rows),
        "<h2>Metrics</h2>",
    ]
    if rows:
        parts.append(_metrics_table(rows))
    else:
        parts.append("<p>No generation finished yet: metrics.jsonl is empty or missing.</p>")
    if curves:
        parts.append('<h2>Curves</h2><div class="curves">')
        parts += [_img(p.relative_to(run_dir).as_posix(), p.stem, "curve") for p in curves]
        parts.append("</div>")
    parts.append("<h2>Samples</h2>")
    if grids:
        parts.append("<p>Every row uses the same captions and seeds.</p>")
        captions = _grid_captions(run_dir)
        header = ('<div class="captions">' + "".join(f"<span>{html.escape(c)}</span>" for c in captions) + "</div>"
                  if captions else "")
        for label, rel in grids:
            parts.append(
                f'<div class="grid-row"><h3>{html.escape(label)}</h3>{header}{_img(rel, label, "grid")}</div>'
            )
    else:
        parts.append("<p>No image grids yet.</p>")
    parts.append("<h2>Config</h2>")
    parts.append(f"<pre>{html.escape(config_text)}</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` (and its curves under ``run_dir/report_files/``) from what the
    run directory holds now; works on a run with no finished generation. Returns the page's path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = read_metrics(run_dir / "metrics.jsonl")
    curves = plot_metric_curves(rows, run_dir / FILES_DIR, curve_names(rows)) if rows else []
    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else "(no config.yaml)"
    page = render_report(run_dir, rows, curves, _generation_grids(run_dir), config_text)
    out = run_dir / REPORT_NAME
    with atomic_replace(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
