"""The chain config: YAML files merged in order over the schema (:mod:`chain_of_diffusion.schema`),
``key=value`` last, then checked.

Every check that can fail on user input raises :class:`ConfigError` with one line that names the
key (``train.lr``) and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf import errors as oc_errors

from chain_of_diffusion.errors import ConfigError
from chain_of_diffusion.schema import (  # noqa: F401  (re-exported: the package imports them from here)
    ARCHS,
    ATTENTION,
    CHANNELS,
    FLOW_SAMPLERS,
    GUIDANCE_SCHEDULES,
    HUB_PUSH_SAMPLES,
    METRIC_NAMES,
    MIX_POLICIES,
    MIXED_PRECISION,
    OBJECTIVES,
    ON_ERROR,
    OPTIMIZERS,
    PRDC_NAMES,
    PRETRAINED_SPACES,
    REAL_FRACTION_SCHEDULES,
    SCHEDULERS,
    SELECT_FEATURES,
    SELECT_METHODS,
    T_SAMPLINGS,
    TRAIN_INITS,
    TRAIN_MODES,
    VECTOR_ARCHS,
    VECTOR_SOURCES,
    ChainConfig,
    DataConfig,
    HubConfig,
    MetricsConfig,
    MixConfig,
    ModelConfig,
    SampleConfig,
    SelectConfig,
    TrainConfig,
    VectorConfig,
    has_labels,
)


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
    _choice("data.on_error", d.on_error, ON_ERROR)
    _choice("data.channels", d.channels, CHANNELS)
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
    _choice("model.arch", m.arch, ARCHS)
    _choice("model.objective", m.objective, OBJECTIVES)
    _at_least("model.num_train_timesteps", m.num_train_timesteps, 2)
    if m.pretrained is not None and not str(m.pretrained).strip():
        raise ConfigError("config key 'model.pretrained': empty; give a pipeline folder, a Hub id, or null")


def _validate_train(cfg: ChainConfig) -> None:
    """train.*"""
    m = cfg.model
    t = cfg.train
    _choice("train.mode", t.mode, TRAIN_MODES)
    _choice("train.init", t.init, TRAIN_INITS)
    if t.mode == "lora" and t.init == "scratch":
        raise ConfigError(
            "config key 'train.init': 'scratch' cannot be combined with train.mode=lora "
            "(a LoRA adapts a base model); use base or previous"
        )
    if m.pretrained is not None and t.init == "scratch":
        raise ConfigError(
            "config key 'train.init': 'scratch' would ignore model.pretrained; use base or previous"
        )
    _choice("train.optimizer", t.optimizer, OPTIMIZERS)
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
    _choice("train.t_sampling", t.t_sampling, T_SAMPLINGS)
    if t.dae_sigma <= 0:
        raise ConfigError(f"config key 'train.dae_sigma': must be > 0, got {t.dae_sigma}")
    if t.snr_gamma is not None and m.objective not in ("eps", "v"):
        raise ConfigError(f"config key 'train.snr_gamma': Min-SNR weights a DDPM loss; model.objective={m.objective} "
                          "has none (set it to null)")
    _at_least("train.validation_every", t.validation_every, 0)
    if t.validation_every > 0 and not t.validation_prompts:
        raise ConfigError("config key 'train.validation_prompts': empty while train.validation_every > 0")
    _choice("train.mixed_precision", t.mixed_precision, MIXED_PRECISION)
    _choice("train.attention", t.attention, ATTENTION)
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
    _at_least("train.log_every", t.log_every, 1)


def _validate_sample(cfg: ChainConfig) -> None:
    """sample.*"""
    s = cfg.sample
    _at_least("sample.num_images", s.num_images, 1, allow_none=True)
    _at_least("sample.steps", s.steps, 1)
    _choice("sample.scheduler", s.scheduler, SCHEDULERS)
    if cfg.model.objective == "flow" and s.scheduler not in FLOW_SAMPLERS:
        raise ConfigError(f"config key 'sample.scheduler': {s.scheduler!r} is a DDPM sampler; model.objective=flow "
                          f"integrates its ODE with {' or '.join(FLOW_SAMPLERS)}")
    _at_least("sample.guidance_scale", s.guidance_scale, 0.0)
    _at_least("sample.guidance_end", s.guidance_end, 0.0)
    _choice("sample.guidance_schedule", s.guidance_schedule, GUIDANCE_SCHEDULES)
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
    _choice("mix.policy", x.policy, MIX_POLICIES)
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
    _choice("mix.real_fraction_schedule", x.real_fraction_schedule, REAL_FRACTION_SCHEDULES)
    _at_least("mix.num_images", x.num_images, 1, allow_none=True)


def _validate_select(cfg: ChainConfig) -> None:
    """select.*"""
    m = cfg.model
    sel = cfg.select
    _choice("select.method", sel.method, SELECT_METHODS)
    _at_least("select.oversample", sel.oversample, 1.0)
    _choice("select.features", sel.features, SELECT_FEATURES)
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
        if name not in METRIC_NAMES:
            raise ConfigError(
                f"config key 'metrics.names': unknown metric {name!r}; known: {', '.join(METRIC_NAMES)}"
            )
    if cfg.metrics.features == "classifier" and not has_labels(cfg.data) and cfg.data.source not in VECTOR_SOURCES:
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
    _choice("hub.push_samples", h.push_samples, HUB_PUSH_SAMPLES)
    if h.push_timeout_s <= 0:
        raise ConfigError(f"config key 'hub.push_timeout_s': must be > 0 seconds, got {h.push_timeout_s}")


# metrics that look at pictures (pretrained image networks, colour and frequency statistics)
IMAGE_ONLY_METRICS = ("fid_inception", "kid_inception", "fd_clip", "clip_score", "fd_dinov2",
                      "saturation", "hf_energy", "sharpness")


def vector_dim(data: DataConfig) -> Optional[int]:
    """The dimension of a vector source's points; None for image sources."""
    if data.source not in VECTOR_SOURCES:
        return None
    return 2 if data.source == "gmm" else data.vectors.dim


def _validate_vectors(cfg: ChainConfig) -> None:
    """data.source gaussian | gmm with model.arch mlp | linear, and what does not apply to vectors."""
    d, m, v = cfg.data, cfg.model, cfg.data.vectors
    vectors = d.source in VECTOR_SOURCES
    if vectors != (m.arch in VECTOR_ARCHS):
        raise ConfigError(
            f"config key 'model.arch': data.source={d.source} gives points; use model.arch={' or '.join(VECTOR_ARCHS)}"
            if vectors else
            f"config key 'model.arch': {m.arch} denoises points, but data.source={d.source} gives images "
            f"(use data.source={' or '.join(VECTOR_SOURCES)}, or an image arch)")
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


def _one_line_omegaconf_error(err: oc_errors.OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, (oc_errors.ConfigAttributeError, oc_errors.ConfigKeyError)):
        parent, _, leaf = key.rpartition(".")
        node = _schema_node(parent)
        allowed = sorted(node.keys()) if node is not None else []
        hint = difflib.get_close_matches(leaf, allowed, n=1)
        suggestion = f" (did you mean '{(parent + '.' if parent else '') + hint[0]}'?)" if hint else ""
        return ConfigError(
            f"{origin}: unknown config key '{key}'{suggestion}; allowed keys here: {', '.join(allowed)}"
        )
    return ConfigError(f"{origin}: config key '{key}': {msg}")


def _schema_node(dotted: str) -> Optional[DictConfig]:
    node: Any = OmegaConf.structured(ChainConfig)
    for part in [p for p in dotted.split(".") if p]:
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, DictConfig) else None


def _one_line_yaml_error(err: Exception, path: Path) -> str:
    """``file:line:column: not valid YAML: <problem>`` (1-based, as editors count) where the yaml
    error carries its position (``problem_mark``), else the first line of its message."""
    mark = getattr(err, "problem_mark", None)
    problem = " ".join(str(getattr(err, "problem", None) or "").split())
    if mark is None or not problem:
        lines = str(err).strip().splitlines()
        return f"{path}: not valid YAML ({lines[0] if lines else type(err).__name__})"
    context = " ".join(str(getattr(err, "context", None) or "").split())
    context_mark = getattr(err, "context_mark", None)
    if context and context_mark is not None:
        context += f" started at line {context_mark.line + 1}, column {context_mark.column + 1}"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    """The dotted keys of the values a loaded YAML mapping sets (``train.steps``)."""
    if not isinstance(node, dict):
        return [prefix.rstrip(".")] if prefix else []
    return [k for key, value in node.items() for k in _dotted_keys(value, f"{prefix}{key}.")]


def pretrained_candidates(name: str, config_file: Optional[str | Path] = None) -> list[Path]:
    """Where a ``model.pretrained`` path is looked for, in order: as given (absolute, or relative to
    the working directory), then relative to the folder of ``config_file``, the config file that set it."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return [path]
    tried = [Path.cwd() / path]
    if config_file is not None:
        beside = Path(config_file).absolute().parent / path
        if os.path.normpath(beside) != os.path.normpath(tried[0]):
            tried.append(Path(os.path.normpath(beside)))
    return tried


def load_config(config_files: list[str | Path] = (), overrides: list[str] = (),
                *, origins: Optional[dict[str, str]] = None) -> ChainConfig:
    """Merge the schema defaults, each YAML file left to right, then ``key=value`` overrides.

    A relative ``model.pretrained`` that is no folder from the working directory is looked for beside
    the config file that set it (:func:`pretrained_candidates`). ``origins``, where given, is filled
    with dotted key -> the config file that set the key last (keys an override set last are left out).
    """
    origins = {} if origins is None else origins
    merged = OmegaConf.structured(ChainConfig)
    for path in config_files:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:  # yaml errors carry multi-line context
            raise ConfigError(_one_line_yaml_error(err, path)) from None
        try:
            merged = OmegaConf.merge(merged, loaded)
        except oc_errors.OmegaConfBaseException as err:
            raise _one_line_omegaconf_error(err, str(path)) from None
        origins.update(dict.fromkeys(_dotted_keys(OmegaConf.to_container(loaded)), str(path)))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        origins.pop(item.split("=", 1)[0].strip(), None)
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except oc_errors.OmegaConfBaseException as err:
            raise _one_line_omegaconf_error(err, f"override {item!r}") from None
    try:
        cfg = OmegaConf.to_object(merged)
    except oc_errors.OmegaConfBaseException as err:
        raise _one_line_omegaconf_error(err, "config") from None
    validate(cfg)
    # a model.pretrained that is no folder from here but one beside the config file that set it: that
    # folder (a Hub id, or a path found nowhere, stays as typed; preflight.py says where it looked)
    tried = pretrained_candidates(cfg.model.pretrained or "", origins.get("model.pretrained"))
    if cfg.model.pretrained and len(tried) == 2 and not tried[0].exists() and tried[1].exists():
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=str(tried[1])))
    return cfg


def to_yaml(cfg: ChainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: ChainConfig) -> dict:
    return dataclasses.asdict(cfg)


# The keys whose change makes an existing run directory a different run: not output_dir (a moved run is
# the same run), nor hub (where a chain is shared changes none of its results); everything else.
def fingerprint_dict(cfg: ChainConfig) -> dict:
    d = to_dict(cfg)
    d.pop("output_dir")
    d.pop("generations")  # extending a finished chain by more generations is allowed
    d.pop("hub")
    return d
