#!/usr/bin/env python
"""(Re)compute metrics of a finished chain run, or evaluate any two image folders.

    python scripts/evaluate.py runs/quickstart                                  # the run's metrics.names
    python scripts/evaluate.py runs/quickstart --metrics fid_inception kid_inception precision recall
    python scripts/evaluate.py --real real_images/ --fake generated/ --metrics fid_inception clip_score --json

Run mode recomputes the named metrics of every generation whose evaluate stage is finished,
merges them into ``gen_XX/evaluate/metrics.json`` and rebuilds ``gen_XX/metrics.json``,
``metrics.jsonl`` and ``report.html``; nothing is retrained or resampled. Inception/CLIP/DINOv2 features of
the samples and of the held-out split that the chain cached (``gen_XX/evaluation/features_*.safetensors``,
``reference/features_*.safetensors``) are reused; missing ones are extracted once and cached. Folder mode compares
``--fake`` against ``--real`` (memorization/generalization against ``--train``, default ``--real``);
with ``--json`` the last line printed is one JSON object of metric name to value.

Config keys of the ``metrics`` group (Inception weights, CLIP model, DINOv2 model, feature space, ...)
are set with ``--set metrics.KEY=VALUE``, e.g. ``--metrics fd_dinov2 --set metrics.dinov2_model=DIR``.
Bad input (an unknown metric, an empty or one-image folder, clip_score without captions, missing
weights) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
# folder mode: no classifier (no labels), so distances and precision/recall default to pixels
FOLDER_DEFAULTS = ["metrics.features=pixels"]
FOLDER_METRICS = ["fid_inception", "kid_inception", "precision", "recall", "density", "coverage",
                  "saturation", "hf_energy", "sharpness"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", help="a chain run directory (run mode)")
    p.add_argument("--real", help="folder of real images (folder mode)")
    p.add_argument("--fake", help="folder of generated images (folder mode); metadata.jsonl 'text' = captions")
    p.add_argument("--train", help="folder the generator trained on (memorization); default --real")
    p.add_argument("--metrics", nargs="+", metavar="NAME", help="metric names (default: the run's metrics.names)")
    p.add_argument("--set", action="append", default=[], metavar="metrics.KEY=VALUE", help="metrics config override")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p


def _bad_input() -> tuple[type[BaseException], ...]:
    from chain_of_diffusion.config import ConfigError
    from chain_of_diffusion.data.imageset import ImageSetError
    from chain_of_diffusion.runs import RunDirError

    return (ConfigError, ImageSetError, RunDirError, ValueError, FileNotFoundError)


def _check_overrides(overrides: list[str]) -> None:
    from chain_of_diffusion.config import ConfigError

    for item in overrides:
        if not item.startswith("metrics.") or "=" not in item:
            raise ConfigError(f"--set {item!r}: only metrics.KEY=VALUE overrides apply here")


def _device():
    """Where the feature networks run: accelerate's device for this process (never torch.cuda directly)."""
    from accelerate import PartialState

    return PartialState().device


def evaluate_run(run_dir: str, names: list[str] | None, overrides: list[str]) -> dict:
    """Recompute ``names`` for every evaluated generation; returns {"generations": [rows]}."""
    from chain_of_diffusion.chain import write_derived
    from chain_of_diffusion.config import load_config
    from chain_of_diffusion.metrics.evaluation import evaluate_generation
    from chain_of_diffusion.metrics.suite import check_names
    from chain_of_diffusion.preflight import check_metric_weights
    from chain_of_diffusion.runs import RunDir, RunDirError, atomic_write_json, read_json
    from chain_of_diffusion.stages.evaluate import EvaluateStage, evaluated_sample_records, generation_folders

    run = RunDir(run_dir)
    if not run.config_path.is_file():
        raise RunDirError(f"{run_dir}: not a chain run directory (no config.yaml)")
    cfg = load_config([run.config_path], overrides)
    names = check_names(names or list(cfg.metrics.names))
    check_metric_weights(cfg.metrics, names)  # files only, before any generation is read
    done = [g for g in range(cfg.generations) if run.is_done(g, EvaluateStage.folder)]
    if not done:
        raise RunDirError(f"{run_dir}: no generation has finished its evaluate stage yet")
    device = _device()
    run.acquire_lock()  # a chain writing this run at the same time would race on metrics.json
    try:
        for g in done:
            folders = generation_folders(run, g)
            path = folders.features / "metrics.json"
            values = evaluate_generation(cfg, folders, evaluated_sample_records(cfg, run, g), names, device=device)
            row = {**read_json(path, {}), **values}
            row["generation"] = g
            atomic_write_json(path, row)
            print(f"gen {g}: " + ", ".join(f"{k}={row[k]:.5g}" for k in sorted(row)
                                           if isinstance(row[k], float)), flush=True)
        rows = write_derived(run, cfg)
    finally:
        run.release_lock()
    print(f"rewrote {run.metrics_path} and {run.root / 'report.html'}")
    return {"generations": rows}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = _parser().parse_args(argv)
    folder_mode = args.real is not None or args.fake is not None
    if folder_mode == (args.run_dir is not None) or (folder_mode and not (args.real and args.fake)):
        print("evaluate.py: error: give either RUN_DIR or both --real and --fake", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        _check_overrides(args.set)
        if folder_mode:
            from chain_of_diffusion.config import load_config
            from chain_of_diffusion.metrics.evaluation import evaluate_folders
            from chain_of_diffusion.preflight import check_metric_weights

            mcfg = load_config([], FOLDER_DEFAULTS + args.set).metrics
            names = args.metrics or FOLDER_METRICS
            check_metric_weights(mcfg, names)
            result, notes = evaluate_folders(args.real, args.fake, names, mcfg, train_dir=args.train)
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
            for key, value in result.items():
                print(f"{key:>20s}  {value:.6g}")
        else:
            result = evaluate_run(args.run_dir, args.metrics, args.set)
    except _bad_input() as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"evaluate.py: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
