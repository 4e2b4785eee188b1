"""evaluate: generation g's metrics against the held-out real split, and its row of the report grid.

Every process extracts features of its share of the evaluated samples (the first N, see
:func:`~chain_of_diffusion.metrics.evaluation.evaluated_sample_records`); the main process
computes the metrics. The tracker is told by the chain once this stage has committed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from accelerate.utils import gather_object
from safetensors.torch import load_file

from chain_of_diffusion.data.imageset import load_images, read_metadata
from chain_of_diffusion.generate import render
from chain_of_diffusion.metrics import (
    evaluation,
    frechet_distance,
    generalization_score,
    knn_entropy,
    memorization_ratio,
)
from chain_of_diffusion.metrics.classifier import cheap_features, load_classifier
from chain_of_diffusion.metrics.report import make_grid_image
from chain_of_diffusion.metrics.suite import FeatureSpaces
from chain_of_diffusion.requests import GRID_ROWS, grid_scale
from chain_of_diffusion.runs import atomic_write_json, read_json
from chain_of_diffusion.stages.base import StageContext


class EvaluateStage:
    name, folder = "evaluate", "evaluation"
    when = "per_generation"
    every_process = True

    def run(self, ctx: StageContext, generation: Optional[int], out: Path) -> dict:
        cfg, run, accelerator = ctx.cfg, ctx.run, ctx.accelerator
        samples_dir = run.stage_path(generation, "samples")
        train_dir = run.stage_path(generation, "train_set")
        sample_records = evaluation.evaluated_sample_records(cfg, run, generation)
        classifier = None
        if cfg.metrics.features == "classifier":
            classifier = load_classifier(run.reference / "classifier")
        spaces = FeatureSpaces(cfg.metrics, classifier=classifier, device=accelerator.device)
        positions = list(range(len(sample_records)))
        with accelerator.split_between_processes(positions) as mine:
            images = load_images(samples_dir, [sample_records[i] for i in mine])
            feats = cheap_features(classifier, images) if len(mine) else torch.empty(0)
            shard = [(i, feats[k].numpy(), images[k].flatten().numpy()) for k, i in enumerate(mine)]
        gathered = sorted(gather_object(shard), key=lambda item: item[0])
        # Inception/CLIP features of the samples: sharded too, cached in this stage's folder
        pretrained = evaluation.sample_features_sharded(cfg, images, sample_records, out, accelerator, spaces)
        if not ctx.is_main:
            accelerator.wait_for_everyone()
            return {}
        sample_features = torch.stack([torch.from_numpy(f) for _, f, _ in gathered])
        sample_pixels = torch.stack([torch.from_numpy(p) for _, _, p in gathered])
        train_records = read_metadata(train_dir)
        train_images = load_images(train_dir, train_records)
        heldout_features = load_file(str(run.reference / "heldout_features.safetensors"))["features"]
        metrics: dict = {"generation": generation}
        names = cfg.metrics.names
        if "fd_classifier" in names:
            metrics[f"fd_{cfg.metrics.features}"] = frechet_distance(sample_features, heldout_features)
        if "memorization" in names:
            metrics["memorization"] = memorization_ratio(sample_pixels, train_images.flatten(1))
        if "generalization" in names:
            metrics["generalization"] = generalization_score(sample_pixels, train_images.flatten(1))
        if "entropy" in names:
            metrics["entropy"] = knn_entropy(cheap_features(classifier, train_images), k=cfg.metrics.entropy_k)
        # Inception/CLIP distances, CLIP score, precision/recall, drift: the metrics module's own glue
        rest = [n for n in names if n not in evaluation.STAGE_INLINE]
        metrics.update(evaluation.evaluate_generation(cfg, run, generation, rest, device=accelerator.device,
                                                      classifier=classifier, sample_features=pretrained,
                                                      feature_dir=out, spaces=spaces))
        stats = read_json(train_dir / "stats.json", {})
        metrics["real_share"] = stats.get("real_share")
        metrics["num_train_images"] = stats.get("num_train_images")
        train_log = read_json(ctx.trained_folder(generation) / "train_log.json", {})
        metrics["train_loss"] = train_log.get("final_loss")
        metrics["num_skipped_files"] = read_json(run.real / "summary.json", {}).get("num_skipped", 0)
        atomic_write_json(out / "metrics.json", metrics)
        # the report's row for this generation: fixed captions and seeds, so rows compare directly
        model = ctx.trained_model(generation)
        requests = json.loads((run.reference / "grid_requests.json").read_text())
        grid = render(model, requests, cfg.sample)
        make_grid_image(grid, nrow=len(requests) // GRID_ROWS, scale=grid_scale(cfg)).save(out / "grid.png")
        accelerator.wait_for_everyone()
        return metrics
