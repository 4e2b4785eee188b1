"""reference: what every generation is compared against, computed once per chain.

Every process extracts its share of the held-out (and real training) features in the pretrained
spaces the metrics need. The main process saves the base model (or records where the pretrained
one was found), trains the real-data classifier, writes the held-out features of the cheap
spaces, the grid requests, the real row of the report and the reference metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from chain_of_diffusion.config import vector_dim
from chain_of_diffusion.data.imageset import load_images, read_metadata
from chain_of_diffusion.errors import ConfigError
from chain_of_diffusion.metrics import frechet_distance, knn_entropy
from chain_of_diffusion.metrics.classifier import (
    cheap_features,
    load_classifier,
    save_classifier,
    train_classifier,
)
from chain_of_diffusion.metrics.evaluation import CLASSIFIER, HELDOUT_FEATURES, reference_stage_features
from chain_of_diffusion.metrics.report import make_grid_image
from chain_of_diffusion.metrics.suite import FeatureSpaces
from chain_of_diffusion.models.build import build_model, save_model
from chain_of_diffusion.models.load import at_resolution
from chain_of_diffusion.models.pretrained import load_pretrained, resolve_pretrained
from chain_of_diffusion.requests import GRID_ROWS, grid_requests, grid_scale
from chain_of_diffusion.runs import atomic_write_json
from chain_of_diffusion.schema import image_channels
from chain_of_diffusion.seeding import derive_seed
from chain_of_diffusion.stages.base import StageContext
from chain_of_diffusion.stages.evaluate import point_picture


class ReferenceStage:
    name = folder = "reference"
    when = "before"
    every_process = True

    def run(self, ctx: StageContext, generation: Optional[int], out: Path) -> dict:
        cfg, run, accelerator = ctx.cfg, ctx.run, ctx.accelerator
        if ctx.is_main:
            if cfg.model.pretrained:
                # a pretrained pipeline is not copied (gigabytes); the run records where it was found
                folder = resolve_pretrained(cfg.model.pretrained)
                # fail here, before any other work, if it cannot load or cannot take data.resolution
                at_resolution(load_pretrained(cfg.model.pretrained), cfg)
                atomic_write_json(out / "base.json", {"pretrained": cfg.model.pretrained, "folder": str(folder)},
                                  indent=1, sort_keys=False)
            else:
                base = build_model(cfg.model, cfg.data.resolution, derive_seed(cfg.seed, "model"),
                                   dim=vector_dim(cfg.data), channels=image_channels(cfg.data))
                save_model(base, out / "base_model")
        accelerator.wait_for_everyone()
        pretrained_summary = reference_stage_features(cfg, run.real / "heldout", run.real / "train", out, accelerator,
                                                      FeatureSpaces(cfg.metrics, device=accelerator.device))
        if not ctx.is_main:
            return {}
        train_records = read_metadata(run.real / "train")
        requests = grid_requests(cfg, train_records)
        atomic_write_json(out / "grid_requests.json", requests, indent=1, sort_keys=False)
        # the real row of the report: for each grid caption, the first real image with that caption
        first: dict = {}
        for r in train_records:
            first.setdefault(r["text"], r)
        row = [first[q["text"]] for q in requests[: len(requests) // GRID_ROWS]]
        if vector_dim(cfg.data):  # points: the real training set's scatter plot
            point_picture(run, load_images(run.real / "train", train_records), "real (training set)").save(
                out / "grid.png")
        else:
            make_grid_image(load_images(run.real / "train", row), nrow=len(row), scale=grid_scale(cfg)).save(
                out / "grid.png"
            )
        classifier = None
        if cfg.metrics.features == "classifier" or "caption_accuracy" in cfg.metrics.names:
            classifier = self._classifier(ctx, train_records, out)
        heldout = load_images(run.real / "heldout", read_metadata(run.real / "heldout"))
        if cfg.metrics.features != "classifier":  # trained for caption_accuracy only: pixels stay the space
            classifier = None
        heldout_features = cheap_features(classifier, heldout)
        save_file({"features": heldout_features.contiguous()}, str(out / HELDOUT_FEATURES))
        train_features = cheap_features(classifier, load_images(run.real / "train", train_records))
        summary: dict = {}
        if "fd_classifier" in cfg.metrics.names:
            summary[f"fd_{cfg.metrics.features}_reference"] = frechet_distance(train_features, heldout_features)
        summary["entropy_reference"] = knn_entropy(train_features, k=cfg.metrics.entropy_k)
        summary.update(pretrained_summary)
        atomic_write_json(out / "metrics.json", summary)
        return summary

    @staticmethod
    def _classifier(ctx: StageContext, train_records: list[dict], out: Path):
        """The real-data classifier whose features ``fd_classifier`` and ``entropy`` use, trained on
        the real training set and pool (never on the held-out split)."""
        cfg, run = ctx.cfg, ctx.run
        fit_records = train_records + read_metadata(run.real / "pool")
        labels = [r.get("label") for r in fit_records]
        if any(label is None for label in labels):
            raise ConfigError(
                f"config key 'metrics.features': 'classifier' needs class labels and data.source="
                f"{cfg.data.source} has none; use metrics.features=pixels"
            )
        pool = fit_records[len(train_records):]
        images = load_images(run.real / "train", train_records)
        if pool:  # empty where every usable image is trained on or held out
            images = torch.cat([images, load_images(run.real / "pool", pool)])
        classifier = train_classifier(
            images, torch.tensor(labels), steps=cfg.metrics.classifier_steps,
            seed=derive_seed(cfg.seed, "classifier"),
        )
        save_classifier(classifier, out / CLASSIFIER)
        return load_classifier(out / CLASSIFIER)
