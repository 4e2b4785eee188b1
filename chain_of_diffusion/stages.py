"""The stages of one generation: files in, files out; the only place where files meet tensors.

Each ``stage_*`` function writes into the temporary folder it is given; :mod:`chain` renames the
folder into place and records it. Functions that every process must run (train, generate,
evaluate's feature extraction) say so; the rest run on the main process only.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file

from chain_of_diffusion.config import ChainConfig, ConfigError
from chain_of_diffusion.data.imageset import load_images, read_metadata, write_metadata
from chain_of_diffusion.data.real import prepare_real
from chain_of_diffusion.generate import generate_image_set, render
from chain_of_diffusion.metrics import (
    frechet_distance,
    generalization_score,
    knn_entropy,
    memorization_ratio,
)
from chain_of_diffusion.metrics.classifier import (
    extract_features,
    load_classifier,
    save_classifier,
    train_classifier,
)
from chain_of_diffusion.metrics.report import make_grid_image
from chain_of_diffusion.mix import build_training_set
from chain_of_diffusion.models.build import (
    build_model,
    build_unet,
    encode_captions,
    encode_images,
    load_model,
    save_model,
    set_attention,
)
from chain_of_diffusion.runs import RunDir, read_json
from chain_of_diffusion.seeding import derive_seed
from chain_of_diffusion.train import TrainData, train_denoiser

log = logging.getLogger(__name__)

GRID_ROWS = 2  # rows per generation in the report grid: the same captions with two seeds


# ---- once per chain --------------------------------------------------------------------------
def stage_real(cfg: ChainConfig, out: Path) -> dict:
    """Main process: read the data source and write real/{heldout,train,pool}."""
    return prepare_real(cfg, out)


def grid_requests(cfg: ChainConfig, real_train: list[dict]) -> list[dict]:
    """The fixed (caption, seed) pairs rendered by every generation for the report grid."""
    captions = sorted({r["text"] for r in real_train})[: cfg.sample.grid_size]
    return [
        {"index": row * len(captions) + j, "text": text, "seed": derive_seed(cfg.seed, "grid", row, j)}
        for row in range(GRID_ROWS)
        for j, text in enumerate(captions)
    ]


def stage_reference(cfg: ChainConfig, run: RunDir, out: Path) -> dict:
    """Main process: the base model, the real-data classifier, held-out features, grid requests."""
    base = build_model(cfg.model, cfg.data.resolution, derive_seed(cfg.seed, "model"))
    save_model(base, out / "base_model")
    train_records = read_metadata(run.real / "train")
    requests = grid_requests(cfg, train_records)
    (out / "grid_requests.json").write_text(json.dumps(requests, indent=1) + "\n")
    # the real row of the report: for each grid caption, the first real image with that caption
    first = {}
    for r in train_records:
        first.setdefault(r["text"], r)
    row = [first[q["text"]] for q in requests[: len(requests) // GRID_ROWS]]
    make_grid_image(load_images(run.real / "train", row), nrow=len(row), scale=_grid_scale(cfg)).save(
        out / "grid.png"
    )
    summary: dict = {}
    if cfg.metrics.features == "classifier":
        fit_records = train_records + read_metadata(run.real / "pool")
        labels = [r.get("label") for r in fit_records]
        if any(label is None for label in labels):
            raise ConfigError(
                f"config key 'metrics.features': 'classifier' needs class labels and data.source="
                f"{cfg.data.source} has none; use metrics.features=pixels"
            )
        images = torch.cat(
            [load_images(run.real / "train", train_records),
             load_images(run.real / "pool", fit_records[len(train_records):])]
        )
        classifier = train_classifier(
            images, torch.tensor(labels), steps=cfg.metrics.classifier_steps,
            seed=derive_seed(cfg.seed, "classifier"),
        )
        save_classifier(classifier, out / "classifier")
        classifier = load_classifier(out / "classifier")
    else:
        classifier = None
    heldout = load_images(run.real / "heldout", read_metadata(run.real / "heldout"))
    heldout_features = _features(cfg, classifier, heldout)
    save_file({"features": heldout_features.contiguous()}, str(out / "heldout_features.safetensors"))
    train_features = _features(cfg, classifier, load_images(run.real / "train", train_records))
    if "fd_classifier" in cfg.metrics.names:
        summary[f"fd_{cfg.metrics.features}_reference"] = frechet_distance(train_features, heldout_features)
    summary["entropy_reference"] = knn_entropy(train_features, k=cfg.metrics.entropy_k)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _grid_scale(cfg: ChainConfig) -> int:
    return max(1, 64 // cfg.data.resolution)


def _features(cfg: ChainConfig, classifier, images: torch.Tensor) -> torch.Tensor:
    if classifier is None:
        return images.flatten(1)
    return extract_features(classifier, images)


# ---- per generation --------------------------------------------------------------------------
def stage_mix(cfg: ChainConfig, run: RunDir, generation: int, out: Path) -> dict:
    """Main process: write the training set's metadata (records point at existing images)."""
    records, stats = build_training_set(cfg, run, generation, out)
    write_metadata(out, records)
    (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats


def _on_device(model, cfg: ChainConfig, device):
    """The model with the configured attention kernel, moved to ``device``."""
    set_attention(model.unet, cfg.train.attention, device)
    return model.to(device)


def load_trained(cfg: ChainConfig, run: RunDir, generation: int):
    """Generation ``generation``'s trained model (on the CPU), whatever the training mode saved."""
    return load_model(run.stage_path(generation, "train"))


def selection_budget(cfg: ChainConfig, run: RunDir) -> int:
    """N, the images a generation keeps: sample.num_images, or one per real training caption."""
    return cfg.sample.num_images or len(read_metadata(run.real / "train"))


def stage_train(cfg: ChainConfig, run: RunDir, generation: int, out: Path, accelerator: Accelerator) -> dict:
    """Every process: train generation ``generation``'s UNet on its training set, save to ``out``."""
    train_dir = run.stage_path(generation, "mix")
    records = read_metadata(train_dir)
    model = load_model(run.reference / "base_model")
    init = cfg.train.init
    if init == "scratch":
        model.unet = build_unet(
            cfg.model, cfg.data.resolution, model.text_encoder.config.hidden_size,
            derive_seed(cfg.seed, "init", generation),
        )
    elif init == "previous" and generation > 0:
        model.unet = load_model(run.stage_path(generation - 1, "train")).unet
    _on_device(model, cfg, accelerator.device)
    images = load_images(train_dir, records)
    x0 = encode_images(model, images)
    captions = sorted({r["text"] for r in records})
    index = {c: i for i, c in enumerate(captions)}
    embeddings = encode_captions(model, captions + [""])
    data = TrainData(
        x0=x0,
        caption_index=torch.tensor([index[r["text"]] for r in records]),
        caption_embeddings=embeddings[:-1],
        empty_embedding=embeddings[-1:],
    )
    checkpoints = run.gen(generation) / ".train_checkpoints"
    result = train_denoiser(
        model.unet, model.noise_scheduler, data, cfg.train,
        seed=derive_seed(cfg.seed, "train", generation), accelerator=accelerator,
        checkpoint_dir=checkpoints, objective=cfg.model.objective, desc=f"gen {generation} train",
    )
    summary = {"steps": result.steps, "final_loss": result.final_loss, "losses": result.losses,
               "resumed_from_step": result.resumed_from_step}
    if accelerator.is_main_process:
        save_model(model, out)
        (out / "train_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    accelerator.wait_for_everyone()
    return summary


def remove_train_checkpoints(run: RunDir, generation: int) -> None:
    shutil.rmtree(run.gen(generation) / ".train_checkpoints", ignore_errors=True)


def sample_requests(cfg: ChainConfig, run: RunDir, generation: int) -> list[dict]:
    """One request per training caption of the real set (the chain's "same captions")."""
    captions = [r["text"] for r in read_metadata(run.real / "train")]
    count = math.ceil(selection_budget(cfg, run) * cfg.select.oversample)
    return [
        {"index": i, "text": captions[i % len(captions)], "seed": derive_seed(cfg.seed, "sample", generation, i),
         "source": "synthetic", "generation": generation}
        for i in range(count)
    ]


def stage_generate(cfg: ChainConfig, run: RunDir, generation: int, out: Path, accelerator: Accelerator) -> int:
    """Every process: render this generation's samples into ``out`` (an imagefolder)."""
    model = _on_device(load_trained(cfg, run, generation), cfg, accelerator.device)
    records = generate_image_set(
        model, sample_requests(cfg, run, generation), cfg.sample, out, accelerator,
        desc=f"gen {generation} generate",
    )
    if accelerator.is_main_process:
        write_metadata(out, records)
    accelerator.wait_for_everyone()
    return len(records)


def stage_select(cfg: ChainConfig, run: RunDir, generation: int, out: Path) -> dict:
    """Main process: keep the budget of this generation's samples for the next generation."""
    from chain_of_diffusion.select import select_indices

    samples_dir = run.stage_path(generation, "generate")
    samples = read_metadata(samples_dir)
    budget = selection_budget(cfg, run)
    method = cfg.select.method
    if method == "none" or budget >= len(samples):
        order = list(range(len(samples)))
    else:
        options = {}
        if method == "threshold_decay":
            options = {"tau0": cfg.select.tau0, "alpha": cfg.select.alpha, "decay_when": cfg.select.decay_when}
        classifier = load_classifier(run.reference / "classifier") if cfg.select.features == "classifier" else None
        features = _features(cfg, classifier, load_images(samples_dir, samples))
        seed = derive_seed(cfg.seed, "select", generation)
        order = select_indices(method, features, budget, seed=seed, **options).tolist()
    # the rank a selector picked a sample at is its score (0 = first pick); none keeps all unranked
    rank = {i: (k if method != "none" else None) for k, i in enumerate(order)}
    records = [{**samples[i], "file_name": f"../samples/{samples[i]['file_name']}", "score": rank[i]}
               for i in sorted(order)]
    write_metadata(out, records)
    return {"method": method, "num_candidates": len(samples), "num_selected": len(records)}


def stage_evaluate(cfg: ChainConfig, run: RunDir, generation: int, out: Path, accelerator: Accelerator) -> dict:
    """Every process extracts features of its share of samples; the main process writes metrics."""
    samples_dir = run.stage_path(generation, "generate")
    train_dir = run.stage_path(generation, "mix")
    sample_records = read_metadata(samples_dir)
    classifier = None
    if cfg.metrics.features == "classifier":
        classifier = load_classifier(run.reference / "classifier")
    positions = list(range(len(sample_records)))
    with accelerator.split_between_processes(positions) as mine:
        images = load_images(samples_dir, [sample_records[i] for i in mine])
        feats = _features(cfg, classifier, images) if len(mine) else torch.empty(0)
        shard = [(i, feats[k].numpy(), images[k].flatten().numpy()) for k, i in enumerate(mine)]
    gathered = sorted(gather_object(shard), key=lambda item: item[0])
    if not accelerator.is_main_process:
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
        metrics["entropy"] = knn_entropy(_features(cfg, classifier, train_images), k=cfg.metrics.entropy_k)
    stats = read_json(train_dir / "stats.json", {})
    metrics["real_share"] = stats.get("real_share")
    metrics["num_train_images"] = stats.get("num_train_images")
    train_log = read_json(run.stage_path(generation, "train") / "train_log.json", {})
    metrics["train_loss"] = train_log.get("final_loss")
    metrics["num_skipped_files"] = read_json(run.real / "summary.json", {}).get("num_skipped", 0)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    # the report's row for this generation: fixed captions and seeds, so rows compare directly
    model = _on_device(load_trained(cfg, run, generation), cfg, accelerator.device)
    requests = json.loads((run.reference / "grid_requests.json").read_text())
    grid = render(model, requests, cfg.sample)
    make_grid_image(grid, nrow=len(requests) // GRID_ROWS, scale=_grid_scale(cfg)).save(out / "grid.png")
    accelerator.wait_for_everyone()
    return metrics
