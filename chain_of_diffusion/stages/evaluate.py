"""evaluate: generation g's metrics against the held-out real split, and its row of the report grid.

Every process extracts features of its share of the evaluated samples (the first N, see
:func:`evaluated_sample_records`) in the cheap space (the classifier's, or pixels) and in the
pretrained spaces the metrics need; the main process gives them to
:func:`~chain_of_diffusion.metrics.evaluation.evaluate_generation`, which maps the names to values
(:func:`~chain_of_diffusion.metrics.suite.compute_metrics`). This file is where the run layout
meets the metrics: :func:`generation_folders` says which folders a generation is evaluated from.
The tracker is told by the chain once this stage has committed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from accelerate.utils import gather_object

from chain_of_diffusion.data.imageset import load_images, read_metadata
from chain_of_diffusion.data.sources.gmm import mode_means
from chain_of_diffusion.generate import render, trajectory_straightness
from chain_of_diffusion.metrics import evaluation
from chain_of_diffusion.metrics.classifier import cheap_features, load_classifier
from chain_of_diffusion.metrics.points import mode_coverage, scatter_image
from chain_of_diffusion.metrics.report import make_grid_image
from chain_of_diffusion.metrics.suite import FeatureSpaces
from chain_of_diffusion.models.load import process_for
from chain_of_diffusion.requests import GRID_ROWS, grid_scale, selection_budget
from chain_of_diffusion.runs import RunDir, atomic_write_json, read_json
from chain_of_diffusion.stages.base import StageContext


def reference_folders(run: RunDir) -> evaluation.ReferenceFolders:
    """Where a chain's generations are compared against: its reference folder and held-out split."""
    return evaluation.ReferenceFolders(reference=run.reference, heldout=run.real / "heldout")


def generation_folders(run: RunDir, generation: int, features: Optional[Path] = None) -> evaluation.GenerationFolders:
    """The folders generation ``generation`` is evaluated from; ``features``: where the samples'
    pretrained features are cached (default: the generation's finished evaluate folder)."""
    return evaluation.GenerationFolders(
        samples=run.stage_path(generation, "samples"),
        train_set=run.stage_path(generation, "train_set"),
        features=features if features is not None else run.stage_path(generation, EvaluateStage.folder),
        reference=reference_folders(run),
    )


def evaluated_sample_records(cfg, run: RunDir, generation: int) -> list[dict]:
    """The samples a generation is judged on: the first N by index, N the selection budget
    (:func:`~chain_of_diffusion.metrics.evaluation.first_by_index`)."""
    records = read_metadata(run.stage_path(generation, "samples"))
    return evaluation.first_by_index(records, selection_budget(cfg, run))


def point_picture(run: RunDir, points: torch.Tensor, title: str):
    """A point set's scatter plot over the held-out real points, on axes every generation of the run shares."""
    heldout = load_images(run.real / "heldout", read_metadata(run.real / "heldout"))
    return scatter_image(points, heldout, title=title, limits=1.5 * float(heldout[:, :2].abs().max()))


class EvaluateStage:
    name, folder = "evaluate", "evaluation"
    when = "per_generation"
    every_process = True

    def run(self, ctx: StageContext, generation: Optional[int], out: Path) -> dict:
        cfg, run, accelerator = ctx.cfg, ctx.run, ctx.accelerator
        folders = generation_folders(run, generation, features=out)
        train_dir = folders.train_set
        sample_records = evaluated_sample_records(cfg, run, generation)
        classifier = None
        if cfg.metrics.features == "classifier" or "caption_accuracy" in cfg.metrics.names:
            classifier = load_classifier(folders.reference.reference / evaluation.CLASSIFIER)
        spaces = FeatureSpaces(cfg.metrics, classifier=classifier, device=accelerator.device)
        if cfg.metrics.features != "classifier":
            classifier = None  # caption_accuracy's classifier (in spaces); the cheap features stay pixels
        positions = list(range(len(sample_records)))
        with accelerator.split_between_processes(positions) as mine:
            images = load_images(folders.samples, [sample_records[i] for i in mine])
            feats = cheap_features(classifier, images) if len(mine) else torch.empty(0)
            shard = [(i, feats[k].numpy()) for k, i in enumerate(mine)]
        gathered = sorted(gather_object(shard), key=lambda item: item[0])
        # Inception/CLIP features of the samples: sharded too, cached in this stage's folder
        pretrained = evaluation.sample_features_sharded(cfg, images, sample_records, out, accelerator, spaces)
        if not ctx.is_main:
            accelerator.wait_for_everyone()
            return {}
        # the cheap space's features (metrics.features: classifier or pixels), gathered in order
        sample_features = {cfg.metrics.features: torch.stack([torch.from_numpy(f) for _, f in gathered]),
                           **pretrained}
        metrics: dict = {"generation": generation}
        metrics.update(evaluation.evaluate_generation(cfg, folders, sample_records, cfg.metrics.names,
                                                      device=accelerator.device, classifier=classifier,
                                                      sample_features=sample_features, spaces=spaces))
        stats = read_json(train_dir / "stats.json", {})
        metrics["real_share"] = stats.get("real_share")
        metrics["num_train_images"] = stats.get("num_train_images")
        train_log = read_json(ctx.trained_folder(generation) / "train_log.json", {})
        metrics["train_loss"] = train_log.get("final_loss")
        metrics["num_skipped_files"] = read_json(run.real / "summary.json", {}).get("num_skipped", 0)
        # the report's row for this generation: fixed captions and seeds, so rows compare directly
        model = ctx.trained_model(generation)
        process = process_for(cfg, model)
        requests = json.loads((run.reference / "grid_requests.json").read_text())
        if len(model.sample_shape) == 1:  # points: a scatter plot of the evaluated samples over the real ones
            points = load_images(folders.samples, sample_records)
            point_picture(run, points, f"generation {generation}").save(out / "grid.png")
            if cfg.data.source == "gmm":
                metrics.update(mode_coverage(points, mode_means(cfg.data), cfg.data.vectors.std))
        else:
            grid = render(model, requests, cfg.sample, process=process)
            make_grid_image(grid, nrow=len(requests) // GRID_ROWS, scale=grid_scale(cfg)).save(out / "grid.png")
        if process.name == "flow":  # how straight the sampling paths are (Liu et al.): reflow's aim
            metrics["straightness"] = trajectory_straightness(model, requests, cfg.sample, process)
        if cfg.metrics.few_steps:  # the few_steps stage's metrics at 1, 2, ... Euler steps
            metrics.update(read_json(run.stage_path(generation, "few_steps") / "metrics.json", {}))
        atomic_write_json(out / "metrics.json", metrics)
        accelerator.wait_for_everyone()
        return metrics
