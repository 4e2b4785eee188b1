"""select: keep the budget N of generation g's candidates for the next generation (main process).

Candidates are the generation's samples (for ``latent``: also the real training images, kept
as records with source=real that point at the real image files). A record's ``score`` is the
rank a selector picked it at (0 = first pick), or the latent filter's score (higher = better).
Learned features of the samples are written next to the selected set (features_*.safetensors).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from chain_of_diffusion.config import selection_space
from chain_of_diffusion.data.imageset import (
    caption_labels,
    image_path,
    load_images,
    read_metadata,
    relative_file_name,
    write_metadata,
)
from chain_of_diffusion.errors import ConfigError
from chain_of_diffusion.metrics.classifier import extract_features, load_classifier
from chain_of_diffusion.models.build import encode_captions, encode_images
from chain_of_diffusion.requests import selection_budget
from chain_of_diffusion.seeding import derive_seed
from chain_of_diffusion.select import select_indices
from chain_of_diffusion.select.cache import cached_features
from chain_of_diffusion.stages.base import StageContext

log = logging.getLogger(__name__)


class SelectStage:
    name, folder = "select", "selected"
    when = "per_generation"
    every_process = False

    def run(self, ctx: StageContext, generation: Optional[int], out: Path) -> dict:
        cfg, run = ctx.cfg, ctx.run
        samples_dir = run.stage_path(generation, "samples")
        samples = read_metadata(samples_dir)
        budget = selection_budget(cfg, run)
        method = cfg.select.method
        extra: dict = {}
        candidates = [{**s, "file_name": f"../samples/{s['file_name']}"} for s in samples]
        if method == "latent":
            candidates, order, scores, extra = _select_latent(ctx, generation, samples, budget, out)
            score = {i: scores[i] for i in order}
        elif method == "none" or budget >= len(samples):
            order = list(range(len(samples)))
            score = {i: None for i in order}
        else:
            options = {}
            if method == "threshold_decay":
                options = {"tau0": cfg.select.tau0, "alpha": cfg.select.alpha, "decay_when": cfg.select.decay_when,
                           "pass_size": cfg.select.pass_size}
            space = selection_space(cfg)
            name = f"features_{space}" + (f"_t{cfg.select.latent_t}" if space == "unet" else "")
            features = _features(ctx, samples_dir, samples, out / f"{name}.safetensors", space)
            seed = derive_seed(cfg.seed, "select", generation)
            order = select_indices(method, features, budget, seed=seed, **options).tolist()
            score = {i: k for k, i in enumerate(order)}
        records = [{**candidates[i], "score": score[i]} for i in sorted(order)]
        write_metadata(out, records)
        return {"method": method, "num_candidates": len(candidates), "num_selected": len(records), **extra}


def _unet_embedder(ctx: StageContext):
    """images (N, C, H, W) in [-1, 1] -> (N, D) generation 0's UNet-encoder embeddings at
    select.latent_t; the model is loaded at the first call only (cache hits never need it)."""
    from chain_of_diffusion.select.latent import unet_embeddings

    cfg = ctx.cfg
    folder = ctx.trained_folder(0)
    if not folder.is_dir():
        raise ConfigError(
            f"config key 'select.method': {cfg.select.method!r} with select.features={selection_space(cfg)!r} "
            f"needs generation 0's trained model and {folder} does not exist"
        )
    loaded: dict = {}

    def embed(images: torch.Tensor) -> torch.Tensor:
        if not loaded:
            model = ctx.trained_model(0)
            num_t = int(model.noise_scheduler.config.num_train_timesteps)
            if not 0 <= cfg.select.latent_t < num_t:
                raise ConfigError(
                    f"config key 'select.latent_t': must be in [0, {num_t}) for generation 0's scheduler, "
                    f"got {cfg.select.latent_t}"
                )
            loaded.update(model=model, context=encode_captions(model, [""]))
        model = loaded["model"]
        return unet_embeddings(
            model.unet, model.noise_scheduler, encode_images(model, images), cfg.select.latent_t,
            seed=derive_seed(cfg.seed, "latent-noise"), context=loaded["context"],
            batch_size=cfg.sample.batch_size,
        )

    return embed


def _features(ctx: StageContext, folder: Path, records: list[dict], cache_file: Path, space: str,
              embed=None) -> torch.Tensor:
    """(N, D) features of an image set in ``space`` (pixels | classifier | unet | inception | clip | dinov2);
    the learned spaces are cached in ``cache_file`` by image content, so an image is featurized once."""
    if space == "pixels":  # the images themselves: nothing worth caching
        return load_images(folder, records).flatten(1)
    if space == "classifier":
        classifier = load_classifier(ctx.run.reference / "classifier")
        fn = lambda images: extract_features(classifier, images)  # noqa: E731
    elif space in ("inception", "clip", "dinov2"):  # the metrics' extractors; one line without weights
        from chain_of_diffusion.metrics.suite import FeatureSpaces

        spaces = FeatureSpaces(ctx.cfg.metrics, device=ctx.accelerator.device)
        fn = lambda images: spaces(space, images)  # noqa: E731
    else:
        fn = embed or _unet_embedder(ctx)
    return cached_features(
        [image_path(folder, r) for r in records],
        lambda pos: fn(load_images(folder, [records[i] for i in pos])),
        cache_file,
    )


def _select_latent(ctx: StageContext, generation: int, samples: list[dict], budget: int, out: Path):
    """Latent space filtering (Cai et al. 2025) of the pooled real training + synthetic candidates.

    Returns (candidate records with file_name relative to the select folder, kept positions best
    first, scores, summary). Real embeddings and the probe are computed once per chain, in
    gen_00/latent/.
    """
    from chain_of_diffusion.runs import atomic_replace
    from chain_of_diffusion.select.latent import (
        LinearProbe,
        cross_fitted_scores,
        fit_probe,
        knn_scores,
        stratified_folds,
        top_n,
    )

    cfg, run = ctx.cfg, ctx.run
    t = cfg.select.latent_t
    real_dir, samples_dir = run.real / "train", run.stage_path(generation, "samples")
    select_dir = run.stage_path(generation, "selected")  # where ``out`` is renamed to; records point from there
    real = read_metadata(real_dir)
    cache = run.gen(0) / "latent"
    embed = _unet_embedder(ctx)
    real_emb = _features(ctx, real_dir, real, cache / f"unet_t{t}.safetensors", "unet", embed)
    sample_emb = _features(ctx, samples_dir, samples, out / f"features_unet_t{t}.safetensors", "unet", embed)
    candidates = [{**r, "file_name": relative_file_name(image_path(real_dir, r), select_dir)} for r in real]
    candidates += [{**s, "file_name": f"../samples/{s['file_name']}"} for s in samples]
    features = torch.cat([real_emb, sample_emb])
    caption_label = caption_labels(real)
    labels = [r.get("label") for r in real] + [caption_label.get(s["text"]) for s in samples]
    if None not in labels and len(set(labels)) >= 2:
        real_labels = torch.tensor(labels[: len(real)])
        folds = cfg.select.latent_folds
        real_fold = stratified_folds(real_labels, folds, seed=derive_seed(cfg.seed, "latent-folds"))
        probes = []
        for f in range(folds):  # fit once per chain, then read back: every generation scores alike
            probe_file = cache / (f"probe_t{t}.safetensors" if folds == 1 else f"probe_t{t}_fold{f}of{folds}.safetensors")
            if not probe_file.is_file():
                fit_rows = real_fold != f if folds > 1 else torch.ones(len(real), dtype=torch.bool)
                probe = fit_probe(real_emb[fit_rows], real_labels[fit_rows],
                                  seed=derive_seed(cfg.seed, "latent-probe", f))
                with atomic_replace(probe_file) as tmp:
                    save_file(probe.state(), str(tmp))
            probes.append(LinearProbe.from_state(load_file(str(probe_file))))
        scores = cross_fitted_scores(probes, real_fold, real_emb, real_labels, sample_emb,
                                     torch.tensor(labels[len(real):]))
        kind = "probe_probability"
    else:
        log.warning(
            "select.method=latent: no class labels for every candidate (data.label_column, or a source with "
            "labels); scoring by minus the distance to the %d-th nearest real embedding instead of a probe",
            cfg.select.latent_k,
        )
        in_real = torch.arange(len(candidates)) < len(real)
        scores = knn_scores(features, real_emb, cfg.select.latent_k, in_reference=in_real)
        kind = "neg_knn_distance"
    order = top_n(scores, budget).tolist()
    num_real = sum(1 for i in order if i < len(real))
    summary = {"score": kind, "num_real_candidates": len(real), "num_real_selected": num_real,
               "mean_score_selected": float(scores[order].mean())}
    return candidates, order, scores.tolist(), summary
