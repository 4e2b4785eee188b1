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

from chain_of_diffusion.config import ChainConfig, ConfigError, selection_space
from chain_of_diffusion.data.imageset import image_path, load_images, read_metadata, write_metadata
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
from chain_of_diffusion.metrics.tracking import log_image
from chain_of_diffusion.mix import build_training_set
from chain_of_diffusion.models.build import (
    MAX_TOKENS,
    build_model,
    build_unet,
    encode_captions,
    encode_images,
    load_model,
    save_model,
    set_attention,
)
from chain_of_diffusion.models.cache import EncodingCache, file_key, text_key
from chain_of_diffusion.models.lora import add_lora, attach_saved_lora, load_lora_into, save_lora
from chain_of_diffusion.models.pretrained import load_pretrained, objective_of, resolve_pretrained
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


def stage_reference(cfg: ChainConfig, run: RunDir, out: Path, accelerator: Accelerator) -> dict:
    """Every process: held-out (and real training) features in the pretrained spaces the metrics
    need, each process its share. Main process: the base model, the real-data classifier, the
    held-out features of the cheap spaces, grid requests, the reference metrics."""
    from chain_of_diffusion.metrics.evaluation import reference_stage_features
    from chain_of_diffusion.metrics.suite import FeatureSpaces

    if accelerator.is_main_process:
        if cfg.model.pretrained:
            # a pretrained pipeline is not copied (gigabytes); the run records where it was found
            folder = resolve_pretrained(cfg.model.pretrained)
            load_pretrained(cfg.model.pretrained)  # fail here, before any other work, if it cannot load
            (out / "base.json").write_text(
                json.dumps({"pretrained": cfg.model.pretrained, "folder": str(folder)}, indent=1) + "\n"
            )
        else:
            base = build_model(cfg.model, cfg.data.resolution, derive_seed(cfg.seed, "model"))
            save_model(base, out / "base_model")
    accelerator.wait_for_everyone()
    pretrained_summary = reference_stage_features(cfg, run, out, accelerator,
                                                  FeatureSpaces(cfg.metrics, device=accelerator.device))
    if not accelerator.is_main_process:
        return {}
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
    summary.update(pretrained_summary)
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


def _weight_dtype(cfg: ChainConfig) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.train.mixed_precision, torch.float32)


def load_base(cfg: ChainConfig, run: RunDir):
    """The model every generation starts from: the pretrained pipeline or the run's built base."""
    if cfg.model.pretrained:
        return load_pretrained(cfg.model.pretrained)
    return load_model(run.reference / "base_model")


def load_trained(cfg: ChainConfig, run: RunDir, generation: int):
    """Generation ``generation``'s trained model (on the CPU), whatever the training mode saved."""
    folder = run.stage_path(generation, "train")
    if cfg.train.mode == "lora":
        model = load_base(cfg, run)
        attach_saved_lora(model.unet, folder, model.text_encoder if cfg.train.lora_text_encoder else None)
        return model
    return load_model(folder)


def _training_model(cfg: ChainConfig, run: RunDir, generation: int, device):
    """The model to train, on ``device``, with only its trainable parameters requiring grad."""
    model = load_base(cfg, run)
    init = cfg.train.init
    if cfg.train.mode == "lora":
        set_attention(model.unet, cfg.train.attention, device)
        for net in (model.unet, model.text_encoder, model.vae):  # frozen bases in the compute dtype
            if net is not None:
                net.to(device, dtype=_weight_dtype(cfg))
        add_lora(model.unet, cfg.train, seed=derive_seed(cfg.seed, "lora", generation))
        text_encoder = None
        if cfg.train.lora_text_encoder:
            text_encoder = model.text_encoder
            add_lora(text_encoder, cfg.train, seed=derive_seed(cfg.seed, "lora_text", generation), text_encoder=True)
        if init == "previous" and generation > 0:
            load_lora_into(model.unet, run.stage_path(generation - 1, "train"), text_encoder)
        return model
    if init == "scratch":
        model.unet = build_unet(
            cfg.model, cfg.data.resolution, model.text_encoder.config.hidden_size,
            derive_seed(cfg.seed, "init", generation),
        )
    elif init == "previous" and generation > 0:
        model.unet = load_model(run.stage_path(generation - 1, "train")).unet
    model.unet.requires_grad_(True)
    return _on_device(model, cfg, device)


def _training_data(cfg: ChainConfig, run: RunDir, train_dir: Path, records: list[dict], model,
                   accelerator: Accelerator, cache_stats: dict) -> TrainData:
    """Encode the training set once: latents (both flips where asked) and caption embeddings.

    With a VAE and ``train.cache_latents`` the encodings go through the run's content-hash cache,
    filled by the main process while the others wait, so no process repeats the VAE's work.
    ``cache_stats`` receives how many encodings were computed and how many were found cached.
    """
    captions = sorted({r["text"] for r in records})
    index = {c: i for i, c in enumerate(captions)}
    flips = [False, True] if cfg.data.random_flip else [False]

    def encode_pixels(positions: list[int], flip: bool) -> torch.Tensor:
        images = load_images(train_dir, [records[i] for i in positions])
        return encode_images(model, images.flip(-1) if flip else images)

    if cfg.train.lora_text_encoder:  # the text encoder trains: captions go in as token ids
        ids = model.tokenizer(captions + [""], padding="max_length", max_length=MAX_TOKENS, truncation=True,
                              return_tensors="pt").input_ids
        text = {"caption_ids": ids[:-1], "empty_ids": ids[-1:]}
    if cfg.train.cache_latents and model.vae is not None:
        cache = EncodingCache(run.root / "cache")
        image_keys = {flip: [file_key(image_path(train_dir, r), "flip" if flip else "") for r in records]
                      for flip in flips}
        text_keys = [text_key(c) for c in captions + [""]]
        if accelerator.is_main_process:
            for flip in flips:
                unique = len(set(image_keys[flip]))
                encoded = cache.fill(image_keys[flip], lambda pos, flip=flip: encode_pixels(pos, flip))
                cache_stats["images_encoded"] = cache_stats.get("images_encoded", 0) + encoded
                cache_stats["images_reused"] = cache_stats.get("images_reused", 0) + unique - encoded
            if not cfg.train.lora_text_encoder:
                encoded = cache.fill(text_keys, lambda pos: encode_captions(model, [(captions + [""])[i] for i in pos]))
                cache_stats.update(captions_encoded=encoded, captions_reused=len(text_keys) - encoded)
        accelerator.wait_for_everyone()
        x0 = {flip: cache.load(image_keys[flip]) for flip in flips}
        if not cfg.train.lora_text_encoder:
            embeddings = cache.load(text_keys)
    else:
        everything = list(range(len(records)))
        x0 = {flip: encode_pixels(everything, flip) for flip in flips}
        if not cfg.train.lora_text_encoder:
            embeddings = encode_captions(model, captions + [""])
    if not cfg.train.lora_text_encoder:
        text = {"caption_embeddings": embeddings[:-1].float(), "empty_embedding": embeddings[-1:].float()}
    return TrainData(
        x0=x0[False].float(),
        caption_index=torch.tensor([index[r["text"]] for r in records]),
        x0_flipped=x0[True].float() if cfg.data.random_flip else None,
        **text,
    )


def selection_budget(cfg: ChainConfig, run: RunDir) -> int:
    """N, the images a generation keeps: sample.num_images, or one per real training caption."""
    return cfg.sample.num_images or len(read_metadata(run.real / "train"))


def stage_train(cfg: ChainConfig, run: RunDir, generation: int, out: Path, accelerator: Accelerator) -> dict:
    """Every process: train generation ``generation``'s UNet on its training set, save to ``out``."""
    train_dir = run.stage_path(generation, "mix")
    records = read_metadata(train_dir)
    model = _training_model(cfg, run, generation, accelerator.device)
    cache_stats: dict = {}
    data = _training_data(cfg, run, train_dir, records, model, accelerator, cache_stats)
    checkpoints = run.gen(generation) / ".train_checkpoints"
    result = train_denoiser(
        model.unet, model.noise_scheduler, data, cfg.train,
        seed=derive_seed(cfg.seed, "train", generation), accelerator=accelerator,
        checkpoint_dir=checkpoints, objective=objective_of(model), desc=f"gen {generation} train",
        on_step=validation_hook(cfg, run, generation, model, accelerator),
        text_encoder=model.text_encoder if cfg.train.lora_text_encoder else None,
    )
    summary = {"steps": result.steps, "final_loss": result.final_loss, "losses": result.losses,
               "resumed_from_step": result.resumed_from_step, "encoding_cache": cache_stats}
    if accelerator.is_main_process:
        if cfg.train.mode == "lora":
            save_lora(model.unet, out, cfg.train, model.text_encoder if cfg.train.lora_text_encoder else None)
        else:
            save_model(model, out)
        (out / "train_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    accelerator.wait_for_everyone()
    return summary


def remove_train_checkpoints(run: RunDir, generation: int) -> None:
    shutil.rmtree(run.gen(generation) / ".train_checkpoints", ignore_errors=True)


def validation_hook(cfg: ChainConfig, run: RunDir, generation: int, model, accelerator: Accelerator):
    """``on_step`` for the trainer: every ``train.validation_every`` steps, render the validation
    prompts (each process its share, with fixed seeds) into ``gen_XX/validation/step_XXXXXX.png``."""
    every = cfg.train.validation_every
    if not every:
        return None
    requests = [{"index": i, "text": text, "seed": derive_seed(cfg.seed, "validation", i)}
                for i, text in enumerate(cfg.train.validation_prompts)]
    folder = run.gen(generation) / "validation"

    def on_step(step: int, unet) -> None:
        if step % every:
            return
        training = [net for net in (unet, model.text_encoder) if net.training]
        for net in training:
            net.eval()
        with accelerator.split_between_processes(requests) as mine, accelerator.autocast():
            images = render(model, list(mine), cfg.sample) if mine else torch.empty(0)
            shard = [(r["index"], images[k].float().numpy()) for k, r in enumerate(mine)]
        for net in training:
            net.train()
        gathered = sorted(gather_object(shard), key=lambda item: item[0])
        if accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            grid = torch.stack([torch.from_numpy(image) for _, image in gathered])
            path = folder / f"step_{step:06d}.png"
            make_grid_image(grid, nrow=len(gathered), scale=_grid_scale(cfg)).save(path)
            # beside the metrics, as diffusers' scripts log validation images
            log_image(cfg.metrics.tracker, cfg.output_dir, f"gen_{generation:02d}_validation", "validation", path, step)

    return on_step


def sample_captions(cfg: ChainConfig, run: RunDir) -> list[str]:
    """The captions a generation renders: the real training captions, or sample.captions' lines."""
    if cfg.sample.captions == "train":
        return [r["text"] for r in read_metadata(run.real / "train")]
    lines = Path(cfg.sample.captions).expanduser().read_text().splitlines()
    captions = [line.strip() for line in lines if line.strip()]
    if not captions:
        raise ConfigError(f"config key 'sample.captions': {cfg.sample.captions} has no captions")
    return captions


def sample_requests(cfg: ChainConfig, run: RunDir, generation: int) -> list[dict]:
    """One request per training caption of the real set (the chain's "same captions")."""
    captions = sample_captions(cfg, run)
    count = math.ceil(selection_budget(cfg, run) * cfg.select.oversample)
    return [
        {"index": i, "text": captions[i % len(captions)], "seed": derive_seed(cfg.seed, "sample", generation, i),
         "source": "synthetic", "generation": generation}
        for i in range(count)
    ]


def stage_generate(cfg: ChainConfig, run: RunDir, generation: int, out: Path, accelerator: Accelerator) -> int:
    """Every process: render this generation's samples into ``out`` (an imagefolder)."""
    model = _on_device(load_trained(cfg, run, generation), cfg, accelerator.device)
    with accelerator.autocast():  # train.mixed_precision also sets the sampling precision
        records = generate_image_set(
            model, sample_requests(cfg, run, generation), cfg.sample, out, accelerator,
            desc=f"gen {generation} generate",
        )
    if accelerator.is_main_process:
        write_metadata(out, records)
    accelerator.wait_for_everyone()
    return len(records)


def _unet_embedder(cfg: ChainConfig, run: RunDir):
    """images (N, C, H, W) in [-1, 1] -> (N, D) generation 0's UNet-encoder embeddings at
    select.latent_t; the model is loaded at the first call only (cache hits never need it)."""
    from chain_of_diffusion.select.latent import unet_embeddings

    folder = run.stage_path(0, "train")
    if not folder.is_dir():
        raise ConfigError(
            f"config key 'select.method': {cfg.select.method!r} with select.features={selection_space(cfg)!r} "
            f"needs generation 0's trained model and {folder} does not exist"
        )
    loaded: dict = {}

    def embed(images: torch.Tensor) -> torch.Tensor:
        if not loaded:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            model = _on_device(load_trained(cfg, run, 0), cfg, device)
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


def _select_features(cfg: ChainConfig, run: RunDir, folder: Path, records: list[dict], cache_file: Path,
                     space: str, embed=None) -> torch.Tensor:
    """(N, D) features of an image set in ``space`` (pixels | classifier | unet | inception | clip);
    the learned spaces are cached in ``cache_file`` by image content, so an image is featurized once."""
    from chain_of_diffusion.select.cache import cached_features

    if space == "pixels":  # the images themselves: nothing worth caching
        return load_images(folder, records).flatten(1)
    if space == "classifier":
        classifier = load_classifier(run.reference / "classifier")
        fn = lambda images: extract_features(classifier, images)  # noqa: E731
    elif space in ("inception", "clip", "dinov2"):  # the metrics' extractors; one line without weights
        from chain_of_diffusion.metrics.suite import FeatureSpaces

        device = "cuda" if torch.cuda.is_available() else "cpu"
        spaces = FeatureSpaces(cfg.metrics, device=device)
        fn = lambda images: spaces(space, images)  # noqa: E731
    else:
        fn = embed or _unet_embedder(cfg, run)
    return cached_features(
        [image_path(folder, r) for r in records],
        lambda pos: fn(load_images(folder, [records[i] for i in pos])),
        cache_file,
    )


def _caption_labels(real: list[dict]) -> dict[str, int]:
    """caption -> class label, from the real records (the most common label where a caption has several)."""
    from collections import Counter

    counts: dict[str, Counter] = {}
    for r in real:
        if r.get("label") is not None:
            counts.setdefault(r["text"], Counter())[int(r["label"])] += 1
    return {text: c.most_common(1)[0][0] for text, c in counts.items()}


def _select_latent(cfg: ChainConfig, run: RunDir, generation: int, samples: list[dict], budget: int, out: Path):
    """Latent space filtering (Cai et al. 2025) of the pooled real training + synthetic candidates.

    Returns (candidate records with file_name relative to the select folder, kept positions best
    first, scores, summary). Real embeddings and the probe are computed once per chain, in
    gen_00/latent/.
    """
    from safetensors.torch import load_file as load_tensors

    from chain_of_diffusion.data.imageset import relative_file_name
    from chain_of_diffusion.select.latent import (
        LinearProbe,
        cross_fitted_scores,
        fit_probe,
        knn_scores,
        stratified_folds,
        top_n,
    )

    t = cfg.select.latent_t
    real_dir, samples_dir = run.real / "train", run.stage_path(generation, "generate")
    select_dir = run.stage_path(generation, "select")  # where ``out`` is renamed to; records point from there
    real = read_metadata(real_dir)
    cache = run.gen(0) / "latent"
    embed = _unet_embedder(cfg, run)
    real_emb = _select_features(cfg, run, real_dir, real, cache / f"unet_t{t}.safetensors", "unet", embed)
    sample_emb = _select_features(cfg, run, samples_dir, samples, out / f"features_unet_t{t}.safetensors", "unet",
                                  embed)
    candidates = [{**r, "file_name": relative_file_name(image_path(real_dir, r), select_dir)} for r in real]
    candidates += [{**s, "file_name": f"../samples/{s['file_name']}"} for s in samples]
    features = torch.cat([real_emb, sample_emb])
    caption_label = _caption_labels(real)
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
                tmp = probe_file.with_name(probe_file.name + ".tmp")
                save_file(probe.state(), str(tmp))
                tmp.replace(probe_file)
            probes.append(LinearProbe.from_state(load_tensors(str(probe_file))))
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


def stage_select(cfg: ChainConfig, run: RunDir, generation: int, out: Path) -> dict:
    """Main process: keep the budget of this generation's candidates for the next generation.

    Candidates are the generation's samples (for ``latent``: also the real training images, kept
    as records with source=real that point at the real image files). A record's ``score`` is the
    rank a selector picked it at (0 = first pick), or the latent filter's score (higher = better).
    Learned features of the samples are written next to the selected set (features_*.safetensors).
    """
    from chain_of_diffusion.select import select_indices

    samples_dir = run.stage_path(generation, "generate")
    samples = read_metadata(samples_dir)
    budget = selection_budget(cfg, run)
    method = cfg.select.method
    extra: dict = {}
    candidates = [{**s, "file_name": f"../samples/{s['file_name']}"} for s in samples]
    if method == "latent":
        candidates, order, scores, extra = _select_latent(cfg, run, generation, samples, budget, out)
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
        features = _select_features(cfg, run, samples_dir, samples, out / f"{name}.safetensors", space)
        seed = derive_seed(cfg.seed, "select", generation)
        order = select_indices(method, features, budget, seed=seed, **options).tolist()
        score = {i: k for k, i in enumerate(order)}
    records = [{**candidates[i], "score": score[i]} for i in sorted(order)]
    write_metadata(out, records)
    return {"method": method, "num_candidates": len(candidates), "num_selected": len(records), **extra}


def stage_evaluate(cfg: ChainConfig, run: RunDir, generation: int, out: Path, accelerator: Accelerator) -> dict:
    """Every process extracts features of its share of the evaluated samples (the first N, see
    :func:`~chain_of_diffusion.metrics.evaluation.evaluated_sample_records`); the main process
    writes the metrics."""
    from chain_of_diffusion.metrics import evaluation

    samples_dir = run.stage_path(generation, "generate")
    train_dir = run.stage_path(generation, "mix")
    sample_records = evaluation.evaluated_sample_records(cfg, run, generation)
    classifier = None
    if cfg.metrics.features == "classifier":
        classifier = load_classifier(run.reference / "classifier")
    from chain_of_diffusion.metrics.suite import FeatureSpaces

    spaces = FeatureSpaces(cfg.metrics, classifier=classifier, device=accelerator.device)
    positions = list(range(len(sample_records)))
    with accelerator.split_between_processes(positions) as mine:
        images = load_images(samples_dir, [sample_records[i] for i in mine])
        feats = _features(cfg, classifier, images) if len(mine) else torch.empty(0)
        shard = [(i, feats[k].numpy(), images[k].flatten().numpy()) for k, i in enumerate(mine)]
    gathered = sorted(gather_object(shard), key=lambda item: item[0])
    # Inception/CLIP features of the samples: sharded too, cached in this stage's folder
    pretrained = evaluation.sample_features_sharded(cfg, images, sample_records, out, accelerator, spaces)
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
    # Inception/CLIP distances, CLIP score, precision/recall, drift: the metrics module's own glue
    rest = [n for n in names if n not in evaluation.STAGE_INLINE]
    metrics.update(evaluation.evaluate_generation(cfg, run, generation, rest, device=accelerator.device,
                                                  classifier=classifier, sample_features=pretrained,
                                                  feature_dir=out, spaces=spaces))
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
    # the tracker is told by the orchestrator once this stage has committed (tracking.log_pending)
    accelerator.wait_for_everyone()
    return metrics
