"""The chain config: one frozen dataclass per stage, YAML files merged in order, ``key=value`` last.

Every check that can fail on user input raises :class:`ConfigError` with one line that names the
key (``train.lr``) and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf import errors as oc_errors

from chain_of_diffusion.errors import ConfigError

ARCHS = ("tiny", "small", "sd15", "tiny_sd")
# The names users type for each choice; the registries that implement them are keyed by these
# (processes.PROCESSES, processes.ddpm.SCHEDULERS, ...) and tests/test_layout.py checks they agree.
OBJECTIVES = ("eps", "v", "flow", "dae")
OPTIMIZERS = ("adamw", "adamw8bit")
TRAIN_MODES = ("full", "lora")
TRAIN_INITS = ("scratch", "base", "previous")
MIXED_PRECISION = ("no", "fp16", "bf16")
ATTENTION = ("auto", "sdpa", "xformers")
SCHEDULERS = ("ddim", "ddpm", "dpmsolver++", "euler", "pndm", "heun")
FLOW_SAMPLERS = ("euler", "heun")  # what model.objective=flow integrates with
T_SAMPLINGS = ("uniform", "logit_normal")
GUIDANCE_SCHEDULES = ("constant", "linear", "cosine", "exponential")
MIX_POLICIES = ("replace", "accumulate", "accumulate_subsample", "fresh", "reflow", "ra_reflow")
REAL_FRACTION_SCHEDULES = ("constant", "linear_decay", "exponential_decay")
SELECT_METHODS = ("none", "random", "greedy_entropy", "threshold_decay", "latent")
SELECT_FEATURES = ("auto", "pixels", "classifier", "unet", "inception", "clip", "dinov2")
ON_ERROR = ("error", "skip")
# Names users put in ``metrics.names`` (docs: README "Evaluation"; metrics/suite.py computes them).
# Here, not in the metrics package, so validating a config imports no torch; metrics re-exports it.
# fd_classifier writes ``fd_<metrics.features>``; kid_inception also writes kid_inception_std;
# saturation writes saturation_mean and saturation_std.
PRDC_NAMES = ("precision", "recall", "density", "coverage")  # the k-NN manifold metrics (metrics.prdc_features)
PRETRAINED_SPACES = ("inception", "clip", "dinov2")  # feature spaces whose networks need weights (preflight.py)
METRIC_NAMES = (
    "fd_classifier", "memorization", "generalization", "entropy",
    "fid_inception", "kid_inception", "fd_clip", "clip_score", "fd_dinov2",
    "precision", "recall", "density", "coverage",
    "saturation", "hf_energy", "sharpness",
)


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"
    path: Optional[str] = None  # folder, csv file, or datasets name/path, depending on source
    caption_column: str = "text"
    image_column: str = "image"
    label_column: Optional[str] = None
    split: str = "train"  # the datasets split for source=hf
    resolution: int = 16  # pixels per side after resize + crop
    center_crop: bool = True
    random_flip: bool = False
    num_train: Optional[int] = 500  # real images used for generation 0; null = all left after held-out
    num_heldout: int = 500  # real images held out for evaluation, chosen by the seed
    max_images: Optional[int] = None  # cap on the images read from the source (null = all)
    on_error: str = "error"  # error | skip: what an undecodable or uncaptioned image does
    min_size: Optional[int] = None  # images with a shorter side below this are errors (or skipped); null = upscale with a warning


@dataclass(frozen=True)
class ModelConfig:
    pretrained: Optional[str] = None  # a diffusers pipeline folder or Hub id; null = build model.arch
    arch: str = "tiny"  # tiny | small | sd15 | tiny_sd: the layout built from a config with random init
    objective: str = "eps"  # eps | v; with model.pretrained the scheduler's prediction_type decides
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    text_hidden_size: int = 64  # tiny/small text encoder width (sd15 uses CLIP ViT-L's 768)


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "full"
    init: str = "scratch"
    steps: int = 700  # optimizer steps per generation
    batch_size: int = 32  # global batch, over all processes and accumulation steps
    micro_batch_size: Optional[int] = None  # per forward pass; null = batch_size / processes
    lr: float = 2e-3
    lr_warmup_steps: int = 50
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    ema_decay: float = 0.995  # exponential moving average of the weights (0 = off); the EMA is saved
    condition_drop: float = 0.0  # probability of training a sample on the empty caption
    lora_rank: int = 4
    lora_alpha: Optional[int] = None  # null = lora_rank (scale 1)
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"])
    lora_text_encoder: bool = False  # also train a LoRA on the CLIP text encoder (captions re-encoded every step)
    lora_text_encoder_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])
    mixed_precision: str = "no"  # no | fp16 | bf16; with LoRA the frozen base is stored in this dtype
    attention: str = "auto"
    gradient_checkpointing: bool = False
    snr_gamma: Optional[float] = None  # Min-SNR loss weighting (Hang et al. 2023); 5.0 is the usual value
    noise_offset: float = 0.0  # extra per-channel noise (Lin et al.), lets the model learn dark/bright images
    t_sampling: str = "uniform"  # model.objective=flow: t ~ U(1e-3, 1) (Liu et al.) or logit_normal (Esser et al.)
    dae_sigma: float = 0.5  # model.objective=dae: the one noise level of the denoising autoencoder
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes)
    cache_latents: bool = True  # encode images and captions once, keyed by content hash, for every epoch
    validation_prompts: list[str] = field(default_factory=list)  # rendered every validation_every steps
    validation_every: int = 0  # 0 = no validation images during training
    checkpoint_every: int = 500  # steps between resumable checkpoints inside a generation
    log_every: int = 50


@dataclass(frozen=True)
class SampleConfig:
    num_images: Optional[int] = None  # null = one image per training record's caption
    steps: int = 20
    scheduler: str = "ddim"
    guidance_scale: float = 2.0
    guidance_schedule: str = "constant"
    guidance_end: float = 1.0
    batch_size: int = 250  # images per forward pass on one process
    grid_size: int = 10  # images per row of the report grid (captions and seeds fixed per chain)
    captions: str = "train"  # train: one image per real training caption; else a text file, one caption a line


@dataclass(frozen=True)
class MixConfig:
    policy: str = "replace"
    real_fraction: float = 0.0
    real_fraction_schedule: str = "constant"
    num_images: Optional[int] = None  # training set size from generation 1 on; null = data.num_train
    # ra_reflow: optimizer steps between re-inverting the real images with the model being trained
    # (the online variant); null = inverted once, with the previous generation's flow
    refresh_real_pairs_every: Optional[int] = None


@dataclass(frozen=True)
class SelectConfig:
    method: str = "none"
    oversample: float = 1.0  # generate oversample x N candidates, keep N
    # the space distances are measured in: pixels | classifier | unet (generation 0's UNet encoder) |
    # inception | clip | dinov2 (where their weights exist: metrics.inception_weights, metrics.clip_*,
    # metrics.dinov2_model) |
    # auto: classifier where the run trains one (metrics.features=classifier, labelled data), else unet
    features: str = "pixels"
    tau0: Optional[float] = None  # threshold_decay: start threshold (null = median NN distance)
    alpha: float = 0.9  # threshold_decay: tau <- alpha * tau
    decay_when: str = "empty_pass"  # threshold_decay: empty_pass | every_pass (decay after an empty / any pass)
    pass_size: Optional[int] = None  # threshold_decay: candidates per pass (null = the budget N)
    # latent and features=unet: the timestep candidates are noised to before generation 0's UNet
    # encoder sees them; small, so the image survives the noise (100 of the default 1000 steps)
    latent_t: int = 100
    latent_k: int = 5  # latent without class labels: score = -distance to the k-th nearest real embedding
    # latent with labels: probes fit on all real images but one fold each, so a real candidate is
    # scored by a probe that never saw it (1 = one probe on everything: in-sample, favours real images)
    latent_folds: int = 2


@dataclass(frozen=True)
class MetricsConfig:
    names: list[str] = field(default_factory=lambda: ["fd_classifier", "memorization", "entropy"])
    features: str = "classifier"
    classifier_steps: int = 600  # optimizer steps of the small real-data classifier, trained once
    entropy_k: int = 1
    # torch-fidelity's Inception weights file (fid_inception/kid_inception); null = the env variable
    # CHAIN_OF_DIFFUSION_INCEPTION_WEIGHTS, then torch hub's cache (scripts/fetch_inception.py builds it)
    inception_weights: Optional[str] = None
    kid_subset_size: int = 1000  # rows per KID subset (lowered to the smaller set's size)
    kid_subsets: int = 100
    prdc_k: int = 5  # neighbours of precision/recall/density/coverage
    prdc_features: Optional[str] = None  # pixels | classifier | inception | clip | dinov2; null = metrics.features
    clip_model: str = "ViT-B-32"  # open-clip model name (clip_score, fd_clip)
    clip_pretrained: Optional[str] = "openai"  # open-clip tag (from the HF cache) or a local checkpoint file
    # transformers Dinov2Model (fd_dinov2, prdc_features=dinov2): a Hub id in the HF cache or a local
    # save_pretrained folder; the default is dgm-eval's ViT-L/14 (`hf download facebook/dinov2-large`)
    dinov2_model: str = "facebook/dinov2-large"
    batch_size: int = 64  # images per forward pass of the Inception / CLIP / DINOv2 feature extractors
    tracker: str = "none"  # none | tensorboard | wandb: also log metrics and grids through accelerate
    # model.objective=flow: also the metrics of the samples re-drawn with this many Euler steps each
    # (reflow's point: fewer steps), as <name>_<k>step; [] = off
    few_steps: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class HubConfig:
    repo_id: Optional[str] = None
    private: bool = True


@dataclass(frozen=True)
class ChainConfig:
    output_dir: str = "runs/quickstart"
    seed: int = 0
    generations: int = 4
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    hub: HubConfig = field(default_factory=HubConfig)


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(allowed)}")


def _at_least(key: str, value: Any, low: float, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value < low:
        raise ConfigError(f"config key '{key}': must be >= {low}, got {value}")


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
                  _validate_select, _validate_metrics):
        check(cfg)


def _validate_data(cfg: ChainConfig) -> None:
    """data.*"""
    d = cfg.data
    from chain_of_diffusion.data.sources import SOURCES  # the registry; imports no torch, PIL, numpy

    _choice("data.source", d.source, tuple(SOURCES))
    _choice("data.on_error", d.on_error, ON_ERROR)
    _at_least("data.resolution", d.resolution, 4)
    _at_least("data.num_train", d.num_train, 1, allow_none=True)
    _at_least("data.num_heldout", d.num_heldout, 2)
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


def load_config(config_files: list[str | Path] = (), overrides: list[str] = ()) -> ChainConfig:
    """Merge the schema defaults, each YAML file left to right, then ``key=value`` overrides."""
    merged = OmegaConf.structured(ChainConfig)
    for path in config_files:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:  # yaml errors carry multi-line context
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        try:
            merged = OmegaConf.merge(merged, loaded)
        except oc_errors.OmegaConfBaseException as err:
            raise _one_line_omegaconf_error(err, str(path)) from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except oc_errors.OmegaConfBaseException as err:
            raise _one_line_omegaconf_error(err, f"override {item!r}") from None
    try:
        cfg = OmegaConf.to_object(merged)
    except oc_errors.OmegaConfBaseException as err:
        raise _one_line_omegaconf_error(err, "config") from None
    validate(cfg)
    return cfg


def to_yaml(cfg: ChainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: ChainConfig) -> dict:
    return dataclasses.asdict(cfg)


# The keys whose change makes an existing run directory a different run.  output_dir is not one
# of them (a moved run is the same run); everything else is.
def fingerprint_dict(cfg: ChainConfig) -> dict:
    d = to_dict(cfg)
    d.pop("output_dir")
    d.pop("generations")  # extending a finished chain by more generations is allowed
    return d
