"""Range and choice checks of a loaded chain config that the type system cannot express, section by
section: the first bad value raises a one-line :class:`ConfigError` naming the key. Whether files or
weights exist is preflight.py's business; loading and merging are config.py's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from chain_of_diffusion import schema
from chain_of_diffusion.errors import ConfigError
from chain_of_diffusion.schema import ChainConfig, DataConfig, has_labels


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, allowed))}")


def _at_least(key: str, value: Any, low: float, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value < low:
        raise ConfigError(f"config key '{key}': must be >= {low}, got {value}")


def _count_or_auto(key: str, value: Any, low: int, *, allow_none: bool = False) -> None:
    """A whole number >= ``low``, or ``auto`` (data.num_train / num_heldout: sized from the source)."""
    if value == "auto":
        return
    if isinstance(value, str):
        raise ConfigError(f"config key '{key}': {value!r} is neither a number nor auto")
    _at_least(key, value, low, allow_none=allow_none)


def _in_unit_interval(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"config key '{key}': must be in [0, 1], got {value}")


def selection_space(cfg: ChainConfig) -> str:
    """The feature space selection measures distances in: ``select.features`` with ``auto`` resolved
    (the real-data classifier where the run trains one, else generation 0's UNet encoder, which
    every backend has: the presets use it so they compose with labelled and unlabelled data)."""
    if cfg.select.features != "auto":
        return cfg.select.features
    return "classifier" if cfg.metrics.features == "classifier" else "unet"


def validate(cfg: ChainConfig) -> None:
    """Range and choice checks that the type system cannot express, section by section (the first
    bad value raises). Whether files or weights exist is preflight.py's business."""
    _at_least("generations", cfg.generations, 1)
    _at_least("seed", cfg.seed, 0)
    for check in (_validate_data, _validate_model, _validate_train, _validate_sample, _validate_mix,
                  _validate_select, _validate_metrics, _validate_vectors, _validate_hub):
        check(cfg)


def _validate_data(cfg: ChainConfig) -> None:
    """data.*"""
    d = cfg.data
    from chain_of_diffusion.data.sources import SOURCES  # the registry; imports no torch, PIL, numpy

    _choice("data.source", d.source, tuple(SOURCES))
    _choice("data.on_error", d.on_error, schema.ON_ERROR)
    _choice("data.channels", d.channels, schema.CHANNELS)
    _at_least("data.resolution", d.resolution, 4)
    _count_or_auto("data.num_train", d.num_train, 1, allow_none=True)
    _count_or_auto("data.num_heldout", d.num_heldout, 2)
    _at_least("data.max_images", d.max_images, 1, allow_none=True)
    _at_least("data.min_size", d.min_size, 1, allow_none=True)
    if d.source in ("imagefolder", "csv", "hf") and not d.path:
        raise ConfigError(f"config key 'data.path': required for data.source={d.source}")


def _validate_model(cfg: ChainConfig) -> None:
    """model.*"""
    m = cfg.model
    _choice("model.arch", m.arch, schema.ARCHS)
    _choice("model.objective", m.objective, schema.OBJECTIVES)
    _at_least("model.num_train_timesteps", m.num_train_timesteps, 2)
    if m.pretrained is not None and not str(m.pretrained).strip():
        raise ConfigError("config key 'model.pretrained': empty; give a pipeline folder, a Hub id, or null")


def _validate_train(cfg: ChainConfig) -> None:
    """train.*"""
    m = cfg.model
    t = cfg.train
    _choice("train.mode", t.mode, schema.TRAIN_MODES)
    _choice("train.init", t.init, schema.TRAIN_INITS)
    if t.mode == "lora" and t.init == "scratch":
        raise ConfigError(
            "config key 'train.init': 'scratch' cannot be combined with train.mode=lora "
            "(a LoRA adapts a base model); use base or previous"
        )
    if m.pretrained is not None and t.init == "scratch":
        raise ConfigError(
            "config key 'train.init': 'scratch' would ignore model.pretrained; use base or previous"
        )
    _choice("train.optimizer", t.optimizer, schema.OPTIMIZERS)
    if not 0.0 <= t.lora_dropout < 1.0:
        raise ConfigError(f"config key 'train.lora_dropout': must be in [0, 1), got {t.lora_dropout}")
    _at_least("train.lora_alpha", t.lora_alpha, 1, allow_none=True)
    if t.lora_text_encoder and t.mode != "lora":
        raise ConfigError("config key 'train.lora_text_encoder': needs train.mode=lora")
    if not t.lora_target_modules:
        raise ConfigError("config key 'train.lora_target_modules': empty; name at least one module, e.g. to_q")
    if t.snr_gamma is not None and t.snr_gamma <= 0:
        raise ConfigError(f"config key 'train.snr_gamma': must be > 0 or null, got {t.snr_gamma}")
    _at_least("train.noise_offset", t.noise_offset, 0.0)
    _choice("train.t_sampling", t.t_sampling, schema.T_SAMPLINGS)
    if t.dae_sigma <= 0:
        raise ConfigError(f"config key 'train.dae_sigma': must be > 0, got {t.dae_sigma}")
    if t.snr_gamma is not None and m.objective not in ("eps", "v"):
        raise ConfigError(f"config key 'train.snr_gamma': Min-SNR weights a DDPM loss; model.objective={m.objective} "
                          "has none (set it to null)")
    _at_least("train.validation_every", t.validation_every, 0)
    if t.validation_every > 0 and not t.validation_prompts:
        raise ConfigError("config key 'train.validation_prompts': empty while train.validation_every > 0")
    _choice("train.mixed_precision", t.mixed_precision, schema.MIXED_PRECISION)
    _choice("train.attention", t.attention, schema.ATTENTION)
    _at_least("train.steps", t.steps, 1)
    _at_least("train.batch_size", t.batch_size, 1)
    _at_least("train.micro_batch_size", t.micro_batch_size, 1, allow_none=True)
    if t.lr <= 0:
        raise ConfigError(f"config key 'train.lr': must be > 0, got {t.lr}")
    _at_least("train.lr_warmup_steps", t.lr_warmup_steps, 0)
    _at_least("train.weight_decay", t.weight_decay, 0.0)
    _at_least("train.max_grad_norm", t.max_grad_norm, 0.0)
    _in_unit_interval("train.condition_drop", t.condition_drop)
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"config key 'train.ema_decay': must be in [0, 1), got {t.ema_decay}")
    _at_least("train.lora_rank", t.lora_rank, 1)
    _at_least("train.checkpoint_every", t.checkpoint_every, 1)
    _at_least("train.process_timeout_s", t.process_timeout_s, 5)
    if cfg.hub.repo_id and t.process_timeout_s <= cfg.hub.push_timeout_s:
        raise ConfigError(f"config key 'train.process_timeout_s': {t.process_timeout_s:g} s, but the other processes "
                          f"wait up to hub.push_timeout_s={cfg.hub.push_timeout_s:g} s for a push; make it longer")
    _at_least("train.log_every", t.log_every, 1)


def _validate_sample(cfg: ChainConfig) -> None:
    """sample.*"""
    s = cfg.sample
    _at_least("sample.num_images", s.num_images, 1, allow_none=True)
    _at_least("sample.steps", s.steps, 1)
    _choice("sample.scheduler", s.scheduler, schema.SCHEDULERS)
    if cfg.model.objective == "flow" and s.scheduler not in schema.FLOW_SAMPLERS:
        raise ConfigError(f"config key 'sample.scheduler': {s.scheduler!r} is a DDPM sampler; model.objective=flow "
                          f"integrates its ODE with {' or '.join(schema.FLOW_SAMPLERS)}")
    _at_least("sample.guidance_scale", s.guidance_scale, 0.0)
    _at_least("sample.guidance_end", s.guidance_end, 0.0)
    _choice("sample.guidance_schedule", s.guidance_schedule, schema.GUIDANCE_SCHEDULES)
    _choice("sample.start", s.start, ("noise", "train_set"))
    if s.start == "train_set" and cfg.model.objective != "dae":
        raise ConfigError(f"config key 'sample.start': starting from the training examples is the DAE chain's "
                          f"(model.objective=dae), not model.objective={cfg.model.objective}'s")
    _at_least("sample.batch_size", s.batch_size, 1)
    _at_least("sample.grid_size", s.grid_size, 1)
    if s.captions != "train" and not Path(s.captions).expanduser().is_file():
        raise ConfigError(
            f"config key 'sample.captions': {s.captions!r} is neither 'train' nor an existing text file"
        )


def _validate_mix(cfg: ChainConfig) -> None:
    """mix.*"""
    x = cfg.mix
    _choice("mix.policy", x.policy, schema.MIX_POLICIES)
    _in_unit_interval("mix.real_fraction", x.real_fraction)
    if x.policy in ("reflow", "ra_reflow"):
        if cfg.model.objective != "flow":
            raise ConfigError(f"config key 'mix.policy': {x.policy!r} trains on a flow's own couplings (noise, ODE(noise)); "
                              f"model.objective={cfg.model.objective} is not a flow (use model.objective=flow)")
        if cfg.data.random_flip:
            raise ConfigError("config key 'data.random_flip': a flipped image would no longer be its noise's "
                              f"ODE solution; mix.policy={x.policy} needs it off")
    if x.policy == "reflow" and x.real_fraction > 0:
        raise ConfigError("config key 'mix.real_fraction': mix.policy=reflow trains on couplings only; set it to 0 "
                          "(or use mix.policy=ra_reflow, which pairs real images with their inversion)")
    if x.policy == "ra_reflow" and round(x.real_fraction * cfg.train.batch_size) < 1:
        raise ConfigError(f"config key 'mix.real_fraction': mix.policy=ra_reflow needs real pairs in every batch; "
                          f"{x.real_fraction} of train.batch_size={cfg.train.batch_size} rounds to none (must be in (0, 1])")
    _at_least("mix.refresh_real_pairs_every", x.refresh_real_pairs_every, 1, allow_none=True)
    if x.refresh_real_pairs_every is not None and x.policy != "ra_reflow":
        raise ConfigError("config key 'mix.refresh_real_pairs_every': only mix.policy=ra_reflow has real pairs "
                          "to re-invert")
    _choice("mix.real_fraction_schedule", x.real_fraction_schedule, schema.REAL_FRACTION_SCHEDULES)
    _at_least("mix.num_images", x.num_images, 1, allow_none=True)


def _validate_select(cfg: ChainConfig) -> None:
    """select.*"""
    m = cfg.model
    sel = cfg.select
    _choice("select.method", sel.method, schema.SELECT_METHODS)
    _at_least("select.oversample", sel.oversample, 1.0)
    _choice("select.features", sel.features, schema.SELECT_FEATURES)
    _at_least("select.pass_size", sel.pass_size, 1, allow_none=True)
    space = selection_space(cfg)
    _at_least("select.latent_k", sel.latent_k, 1)
    _at_least("select.latent_folds", sel.latent_folds, 1)
    uses_unet = sel.method == "latent" or (space == "unet" and sel.method in ("greedy_entropy", "threshold_decay"))
    if uses_unet and m.objective not in ("eps", "v"):
        raise ConfigError(f"config key 'select.method': {sel.method!r} in UNet features noises images on the DDPM "
                          f"schedule, which model.objective={m.objective} does not have; use select.features=pixels "
                          "or classifier")
    if uses_unet and not 0 <= sel.latent_t < m.num_train_timesteps:
        raise ConfigError(
            f"config key 'select.latent_t': must be in [0, model.num_train_timesteps={m.num_train_timesteps}), "
            f"got {sel.latent_t}"
        )
    _choice("select.decay_when", sel.decay_when, ("empty_pass", "every_pass"))
    if space == "classifier" and cfg.metrics.features != "classifier":
        raise ConfigError(
            "config key 'select.features': 'classifier' needs metrics.features=classifier (it trains the classifier)"
        )
    if not 0.0 < sel.alpha < 1.0:
        raise ConfigError(f"config key 'select.alpha': must be in (0, 1), got {sel.alpha}")
    if sel.tau0 is not None and sel.tau0 <= 0:
        raise ConfigError(f"config key 'select.tau0': must be > 0 or null, got {sel.tau0}")


def _validate_metrics(cfg: ChainConfig) -> None:
    """metrics.* (the names and values; weights: preflight.py)"""
    for name in cfg.metrics.names:
        if name not in schema.METRIC_NAMES:
            raise ConfigError(
                f"config key 'metrics.names': unknown metric {name!r}; known: {', '.join(schema.METRIC_NAMES)}"
            )
    if cfg.metrics.features == "classifier" and not has_labels(cfg.data) and cfg.data.source not in schema.VECTOR_SOURCES:
        raise ConfigError(
            f"config key 'metrics.features': 'classifier' needs class labels and data.source={cfg.data.source} "
            "has none; use metrics.features=pixels (or set data.label_column)"
        )
    if "caption_accuracy" in cfg.metrics.names and not has_labels(cfg.data):
        raise ConfigError(
            f"config key 'metrics.names': 'caption_accuracy' needs class labels and data.source={cfg.data.source} "
            "has none; set data.label_column (imagefolder, csv, hf) or drop caption_accuracy"
        )
    _at_least("metrics.classifier_steps", cfg.metrics.classifier_steps, 1)
    _at_least("metrics.entropy_k", cfg.metrics.entropy_k, 1)
    if isinstance(cfg.data.num_train, int) and cfg.data.num_train <= cfg.metrics.entropy_k:
        # the reference stage's k-NN entropy of the training set needs k + 1 points
        raise ConfigError(f"config key 'data.num_train': {cfg.data.num_train} image(s) leave no k-NN entropy "
                          f"(metrics.entropy_k={cfg.metrics.entropy_k} needs at least {cfg.metrics.entropy_k + 1})")
    _choice("metrics.features", cfg.metrics.features, ("classifier", "pixels"))
    _at_least("metrics.kid_subset_size", cfg.metrics.kid_subset_size, 2)
    _at_least("metrics.kid_subsets", cfg.metrics.kid_subsets, 1)
    _at_least("metrics.prdc_k", cfg.metrics.prdc_k, 1)
    _at_least("metrics.batch_size", cfg.metrics.batch_size, 1)
    if cfg.metrics.prdc_features is not None:
        _choice("metrics.prdc_features", cfg.metrics.prdc_features,
                ("pixels", "classifier", "inception", "clip", "dinov2"))
        if cfg.metrics.prdc_features == "classifier" and cfg.metrics.features != "classifier":
            raise ConfigError("config key 'metrics.prdc_features': 'classifier' needs metrics.features=classifier")
    _choice("metrics.tracker", cfg.metrics.tracker, ("none", "tensorboard", "wandb"))
    for steps in cfg.metrics.few_steps:
        _at_least("metrics.few_steps", steps, 1)
    if cfg.metrics.few_steps and cfg.model.objective != "flow":
        raise ConfigError(f"config key 'metrics.few_steps': re-sampling with 1-2 Euler steps measures a flow's "
                          f"straightness in quality; model.objective={cfg.model.objective} is not a flow")


# a Hub repo id: namespace/name, each of letters, digits, "-", "_", "." (no "--" or "..", not starting
# or ending with "-" or "."), the name at most 96 characters
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_HUB_REPO_ID = re.compile(rf"{_HUB_PART}/{_HUB_PART}")


def _validate_hub(cfg: ChainConfig) -> None:
    """hub.* (whether a token exists: preflight.py)"""
    h = cfg.hub
    if h.repo_id is not None:
        repo = str(h.repo_id)
        if not _HUB_REPO_ID.fullmatch(repo) or "--" in repo or ".." in repo or len(repo.split("/")[1]) > 96:
            raise ConfigError(f"config key 'hub.repo_id': {repo!r} is not a Hub repo id; give namespace/name "
                              "(e.g. my-name/digits-chain)")
    _choice("hub.push_samples", h.push_samples, schema.HUB_PUSH_SAMPLES)
    if h.push_timeout_s <= 0:
        raise ConfigError(f"config key 'hub.push_timeout_s': must be > 0 seconds, got {h.push_timeout_s}")


# metrics that look at pictures (pretrained image networks, colour and frequency statistics)
IMAGE_ONLY_METRICS = ("fid_inception", "kid_inception", "fd_clip", "clip_score", "fd_dinov2",
                      "saturation", "hf_energy", "sharpness")


def vector_dim(data: DataConfig) -> Optional[int]:
    """The dimension of a vector source's points; None for image sources."""
    if data.source not in schema.VECTOR_SOURCES:
        return None
    return 2 if data.source == "gmm" else data.vectors.dim


def _validate_vectors(cfg: ChainConfig) -> None:
    """data.source gaussian | gmm with model.arch mlp | linear, and what does not apply to vectors."""
    d, m, v = cfg.data, cfg.model, cfg.data.vectors
    vectors = d.source in schema.VECTOR_SOURCES
    if vectors != (m.arch in schema.VECTOR_ARCHS):
        raise ConfigError(
            f"config key 'model.arch': data.source={d.source} gives points; use model.arch={' or '.join(schema.VECTOR_ARCHS)}"
            if vectors else
            f"config key 'model.arch': {m.arch} denoises points, but data.source={d.source} gives images "
            f"(use data.source={' or '.join(schema.VECTOR_SOURCES)}, or an image arch)")
    if not vectors:
        return
    _at_least("data.vectors.dim", v.dim, 1)
    if v.mean is not None and len(v.mean) != v.dim:
        raise ConfigError(f"config key 'data.vectors.mean': {len(v.mean)} values for data.vectors.dim={v.dim}")
    if v.covariance is not None and (len(v.covariance) != v.dim or not (
            all(isinstance(x, (int, float)) for x in v.covariance)
            or all(isinstance(r, (list, tuple)) and len(r) == v.dim for r in v.covariance))):
        raise ConfigError(f"config key 'data.vectors.covariance': give {v.dim} variances or a {v.dim}x{v.dim} matrix")
    _at_least("data.vectors.modes", v.modes, 1)
    if v.std <= 0:
        raise ConfigError(f"config key 'data.vectors.std': must be > 0, got {v.std}")
    if d.num_train is None:
        raise ConfigError("config key 'data.num_train': points are drawn, not read; give how many to train on")
    refused = [
        (m.pretrained is not None, "model.pretrained", "a pretrained pipeline denoises images"),
        (m.arch == "linear" and m.objective != "dae", "model.objective",
         "model.arch=linear is the theorem's linear denoiser, with no time input: use model.objective=dae"),
        (cfg.train.mode == "lora", "train.mode", "a LoRA adapts a UNet's attention; train the point denoiser fully"),
        (d.random_flip, "data.random_flip", "points have no left and right"),
        (cfg.train.validation_every > 0, "train.validation_every", "validation images are pictures"),
        (cfg.metrics.features != "pixels", "metrics.features",
         "points have no classifier: use pixels (the raw coordinates)"),
        (cfg.metrics.prdc_features not in (None, "pixels"), "metrics.prdc_features", "use pixels (the raw coordinates)"),
        (cfg.select.method == "latent" or (cfg.select.method != "none" and selection_space(cfg) != "pixels"),
         "select.features", "points are selected in their raw coordinates: select.features=pixels, no latent"),
    ]
    for bad, key, why in refused:
        if bad:
            raise ConfigError(f"config key '{key}': data.source={d.source} gives points; {why}")
    pictures = [n for n in cfg.metrics.names if n in IMAGE_ONLY_METRICS]
    if pictures:
        raise ConfigError(f"config key 'metrics.names': {pictures[0]} measures images; data.source={d.source} "
                          "gives points (fd_classifier, memorization, generalization, entropy, precision, "
                          "recall, density and coverage work on them)")
