"""Log each generation's metrics and image grid to an experiment tracker through accelerate's
trackers (``metrics.tracker``: none | tensorboard | wandb), on the main process.

TensorBoard event files go to ``<output_dir>/tensorboard/``; the step is the generation, so the
curves in TensorBoard are the report's curves. W&B runs go to project ``$WANDB_PROJECT`` (default
``chain-of-diffusion``), grouped by the run directory's name, with local files in
``<output_dir>/wandb/`` (``WANDB_MODE=offline`` needs no network; ``wandb sync`` uploads later).
Each ``run_name`` is one W&B run with an id derived from the run directory, resumed on every open,
so a chain's generations (and its resumes) make one curve rather than one run per point.

The orchestrator calls :func:`log_pending` after a generation's evaluate stage has committed (and
on every resume): a generation is logged once, even when its evaluate stage was killed and re-run,
or the chain was killed before the tracker was told. A tracker whose package is missing is a
one-line :class:`~chain_of_diffusion.config.ConfigError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from chain_of_diffusion.errors import ConfigError
from chain_of_diffusion.runs import atomic_write_text

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
WANDB_PROJECT = "chain-of-diffusion"


def wandb_run_id(output_dir: str | Path, run_name: str) -> str:
    """A W&B run id stable for (run directory, run_name): reopening resumes the same run."""
    import hashlib

    digest = hashlib.sha256(f"{Path(output_dir).resolve()}\n{run_name}".encode()).hexdigest()[:16]
    return f"{run_name[:40]}-{digest}"


def open_tracker(kind: str, output_dir: str | Path, run_name: str = "chain"):
    """An accelerate ``GeneralTracker`` (or None for ``none``)."""
    if kind == "none":
        return None
    import importlib.util

    if importlib.util.find_spec(PACKAGES[kind]) is None:
        raise ConfigError(f"config key 'metrics.tracker': {kind!r} needs `pip install {PACKAGES[kind]}`")
    if kind == "tensorboard":
        from accelerate.tracking import TensorBoardTracker

        tracker = TensorBoardTracker(run_name, Path(output_dir) / "tensorboard")
    else:
        import os

        from accelerate import PartialState
        from accelerate.tracking import WandBTracker

        PartialState()  # WandBTracker logs through accelerate's logger, which refuses to run without a state
        # WandBTracker passes its first argument as the W&B project
        tracker = WandBTracker(os.environ.get("WANDB_PROJECT") or WANDB_PROJECT, name=run_name,
                               id=wandb_run_id(output_dir, run_name), resume="allow",
                               group=Path(output_dir).resolve().name, dir=str(output_dir))
    tracker.start()  # accelerate's Accelerator.init_trackers does this; standalone use must too
    return tracker


def log_generation(kind: str, output_dir: str | Path, metrics: dict, grid: str | Path | None = None) -> None:
    """Log the numeric entries of one generation's ``metrics`` (step = ``metrics["generation"]``)
    and its grid image (as ``samples``)."""
    tracker = open_tracker(kind, output_dir)
    if tracker is None:
        return
    step = int(metrics["generation"])
    values = {k: float(v) for k, v in metrics.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "generation"}
    tracker.log(values, step=step)
    if grid is not None and Path(grid).exists():
        _log_png(tracker, "samples", grid, step)
    tracker.finish()


def _log_png(tracker, name: str, path: str | Path, step: int) -> None:
    image = np.asarray(Image.open(path).convert("RGB"))  # (H, W, 3) uint8
    # TensorBoard needs the layout named; wandb.log rejects that keyword and reads HWC arrays as they are
    extra = {"dataformats": "NHWC"} if tracker.name == "tensorboard" else {}
    tracker.log_images({name: image[None]}, step=step, **extra)


def log_image(kind: str, output_dir: str | Path, run_name: str, name: str, path: str | Path, step: int) -> None:
    """Log one PNG (validation images during training) under its own run ``run_name``."""
    tracker = open_tracker(kind, output_dir, run_name=run_name)
    if tracker is None:
        return
    _log_png(tracker, name, path, step)
    tracker.finish()


def logged_path(output_dir: str | Path, kind: str) -> Path:
    """The run's record of which generations ``kind`` has been given."""
    return Path(output_dir) / f".tracker_{kind}.json"


def log_pending(kind: str, output_dir: str | Path, rows: list[dict], grids: dict[int, Path] | None = None) -> list[int]:
    """Log each finished generation's metrics ``rows`` not yet logged to ``kind``; returns the
    generations logged now. Idempotent: the generations already given are recorded next to the run
    (written after each one is logged, so only a kill in between can repeat one)."""
    if kind == "none":
        return []
    import json

    path = logged_path(output_dir, kind)
    done = set(json.loads(path.read_text())) if path.exists() else set()
    now = []
    for row in sorted(rows, key=lambda r: r["generation"]):
        g = int(row["generation"])
        if g in done:
            continue
        log_generation(kind, output_dir, row, (grids or {}).get(g))
        done.add(g)
        now.append(g)
        atomic_write_text(path, json.dumps(sorted(done)) + "\n")
    return now
