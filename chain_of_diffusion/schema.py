"""The config schema: the names users type for each choice, and one frozen dataclass per section.

Loading, overrides and the value checks are :mod:`chain_of_diffusion.config`'s (which re-exports all
of this); this module holds only what a config *is*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

ARCHS = ("tiny", "small", "rf_cifar", "sd15", "tiny_sd", "mlp", "linear")
VECTOR_ARCHS = ("mlp", "linear")  # denoisers of vectors (data.source gaussian, gmm), not images
VECTOR_SOURCES = ("gaussian", "gmm")
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
HUB_PUSH_SAMPLES = ("none", "grid", "all")  # all: also every sample, as a dataset repo <repo_id>-samples
# Names users put in ``metrics.names`` (docs/metrics.md; metrics/suite.py computes them).
# Here, not in the metrics package, so validating a config imports no torch; metrics re-exports it.
# fd_classifier writes ``fd_<metrics.features>``; kid_inception also writes kid_inception_std;
# saturation writes saturation_mean and saturation_std.
PRDC_NAMES = ("precision", "recall", "density", "coverage")  # the k-NN manifold metrics (metrics.prdc_features)
PRETRAINED_SPACES = ("inception", "clip", "dinov2")  # feature spaces whose networks need weights (preflight.py)
METRIC_NAMES = (
    "fd_classifier", "memorization", "generalization", "entropy",
    "fid_inception", "kid_inception", "fd_clip", "clip_score", "fd_dinov2",
    "precision", "recall", "density", "coverage",
    "saturation", "hf_energy", "sharpness", "caption_accuracy",
)
# sources whose every example has a class label (others: where data.label_column names one)
LABELLED_SOURCES = ("digits", "digits_bold", "fashion_mnist", "gmm")
# sources whose images are grey: data.channels=auto trains on them with 1 channel, not 3 equal ones
GRAYSCALE_SOURCES = ("digits", "digits_bold", "fashion_mnist")
CHANNELS = ("auto", 1, 3)


@dataclass(frozen=True)
class VectorConfig:
    """data.source=gaussian | gmm: points drawn from a known distribution (with a fixed seed), not images."""

    dim: int = 2  # gaussian: the dimension (gmm is 2-D)
    mean: Optional[list[float]] = None  # gaussian: null = the origin
    covariance: Optional[list[Any]] = None  # gaussian: dim variances (diagonal) or a dim x dim matrix; null = I
    modes: int = 8  # gmm: modes evenly spaced on a circle
    radius: float = 4.0  # gmm: the circle's radius
    std: float = 0.3  # gmm: each mode's standard deviation
    class_captions: bool = False  # gmm: caption "mode k" (class-conditional) instead of "a point" for all


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"
    path: Optional[str] = None  # folder, csv file, or datasets name/path, depending on source
    caption_column: str = "text"
    image_column: str = "image"
    label_column: Optional[str] = None
    split: str = "train"  # the datasets split for source=hf
    # pixels per side after resize + crop, what the model trains and generates at (a pretrained pipeline too);
    # a multiple of what the model's VAE and UNet down-sampling need (preflight.py checks it)
    resolution: int = 16
    center_crop: bool = True
    random_flip: bool = False
    # real images generation 0 trains on: a number; null = every image not held out; auto = 500 (at most)
    # for a source of 1,000+ usable images, else every image not held out (data/split.py)
    num_train: Optional[Union[int, str]] = "auto"
    # real images held out for evaluation, chosen by the seed: a number; auto = 500 for a source of
    # 1,000+ usable images, else 20% of them (rounded down, at least 8); the start says what auto chose
    num_heldout: Union[int, str] = "auto"
    max_images: Optional[int] = None  # cap on the images read from the source (null = all)
    on_error: str = "error"  # error | skip: what an undecodable or uncaptioned image does
    min_size: Optional[int] = None  # images with a shorter side below this are errors (or skipped); null = upscale with a warning
    # colour channels a model built here trains and renders: 1 | 3 | auto (1 for a grayscale source, else 3,
    # so grey data is not learned as three channels that could drift apart; a pretrained pipeline takes its own)
    channels: Union[int, str] = "auto"
    vectors: VectorConfig = field(default_factory=VectorConfig)  # data.source gaussian | gmm


def has_labels(data: DataConfig) -> bool:
    """Whether every example of the source has a class label (the classifier, caption_accuracy)."""
    return data.source in LABELLED_SOURCES or (data.source in ("imagefolder", "csv", "hf") and bool(data.label_column))


def image_channels(data: DataConfig) -> int:
    """The channels of a model built for ``data`` (``data.channels`` with ``auto`` resolved)."""
    if data.channels != "auto":
        return int(data.channels)
    return 1 if data.source in GRAYSCALE_SOURCES else 3


@dataclass(frozen=True)
class ModelConfig:
    pretrained: Optional[str] = None  # a diffusers pipeline folder or Hub id; null = build model.arch
    arch: str = "tiny"  # tiny | small | rf_cifar | sd15 | tiny_sd | mlp | linear: built with random init
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
    # seconds a process waits for the others at a collective before the launch stops (one died or hung):
    # torch.distributed's process-group timeout (its own defaults: 600 s NCCL, 1800 s gloo). It must
    # outlast the longest work the main process does alone (a Hub push: hub.push_timeout_s). Not part
    # of a run's identity: a resumed run may set another.
    process_timeout_s: float = 1800.0
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
    # noise: each sample starts from its seed's noise; train_set (dae): from the generation's own training
    # examples, x <- D(x + sigma eps), the chain of Zhu et al.'s DAE theorem
    start: str = "noise"


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
    """Push every generation to a Hugging Face model repo (chain_of_diffusion/hub.py, stages/push.py)."""

    repo_id: Optional[str] = None  # namespace/name; null = no push
    private: bool = True  # a repo the push creates is private
    branch_per_generation: bool = True  # also a branch gen-XX at the commit that pushed generation XX
    push_samples: str = "grid"  # none | grid (gen_XX/grid.png) | all (also the samples: dataset <repo_id>-samples)
    overwrite: bool = False  # push into a repo whose card holds another chain's lineage
    # the longest the chain waits for one push (the other processes wait at a barrier meanwhile; NCCL's
    # process-group timeout is 600 s); a push still running then finishes in the background, left pending
    push_timeout_s: float = 300.0


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
