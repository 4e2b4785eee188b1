"""The three models a chain loads: the base, a generation's trained model, and the model to train.

Where each lives is the caller's business: this module takes folders, not a run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from chain_of_diffusion.config import ChainConfig, vector_dim
from chain_of_diffusion.models.build import T2IModel, build_unet, load_model, set_attention
from chain_of_diffusion.models.layouts import check_resolution, unet_multiple_of
from chain_of_diffusion.models.lora import add_lora, attach_saved_lora, load_lora_into
from chain_of_diffusion.models.pretrained import load_pretrained, objective_of
from chain_of_diffusion.processes import Process, make_process
from chain_of_diffusion.seeding import derive_seed


def weight_dtype(cfg: ChainConfig) -> torch.dtype:
    """The dtype of frozen weights: train.mixed_precision's compute dtype."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.train.mixed_precision, torch.float32)


def on_device(model: T2IModel, cfg: ChainConfig, device) -> T2IModel:
    """The model with the configured attention kernel, moved to ``device``."""
    set_attention(model.unet, cfg.train.attention, device)
    return model.to(device)


def at_resolution(model: T2IModel, cfg: ChainConfig) -> T2IModel:
    """``model`` rendering images of ``data.resolution`` pixels a side (latents of that over the VAE
    scale), whatever size its UNet config was saved with (a pretrained pipeline's own, e.g. 512 for
    SD 1.5); a one-line ConfigError where the model cannot take that size. Point models as they are."""
    if vector_dim(cfg.data) is not None:
        return model
    model.resolution = cfg.data.resolution
    what = f"model.pretrained={cfg.model.pretrained}" if cfg.model.pretrained else f"model.arch={cfg.model.arch}"
    check_resolution(cfg.data.resolution, model.vae_scale, unet_multiple_of(model.unet.config), what)
    return model


def load_base(cfg: ChainConfig, built_base: Path) -> T2IModel:
    """The model every generation starts from: the pretrained pipeline, or the run's built base,
    at ``data.resolution``."""
    if cfg.model.pretrained:
        return at_resolution(load_pretrained(cfg.model.pretrained), cfg)
    return at_resolution(load_model(built_base), cfg)


def load_trained(cfg: ChainConfig, built_base: Path, folder: Path) -> T2IModel:
    """A generation's trained model (on the CPU) from its ``folder``, whatever the training mode saved."""
    if cfg.train.mode == "lora":
        model = load_base(cfg, built_base)
        attach_saved_lora(model.unet, folder, model.text_encoder if cfg.train.lora_text_encoder else None)
        return model
    return at_resolution(load_model(folder), cfg)


def training_model(cfg: ChainConfig, built_base: Path, generation: int, previous: Optional[Path], device) -> T2IModel:
    """The model generation ``generation`` trains, on ``device``, with only its trainable
    parameters requiring grad; ``previous`` is the previous generation's model folder (or None)."""
    model = load_base(cfg, built_base)
    init = cfg.train.init
    if cfg.train.mode == "lora":
        set_attention(model.unet, cfg.train.attention, device)
        for net in (model.unet, model.text_encoder, model.vae):  # frozen bases in the compute dtype
            if net is not None:
                net.to(device, dtype=weight_dtype(cfg))
        add_lora(model.unet, cfg.train, seed=derive_seed(cfg.seed, "lora", generation))
        text_encoder = None
        if cfg.train.lora_text_encoder:
            text_encoder = model.text_encoder
            add_lora(text_encoder, cfg.train, seed=derive_seed(cfg.seed, "lora_text", generation), text_encoder=True)
        if init == "previous" and previous is not None:
            load_lora_into(model.unet, previous, text_encoder)
        return model
    if init == "scratch":
        model.unet = build_unet(
            cfg.model, cfg.data.resolution, model.text_encoder.config.hidden_size,
            derive_seed(cfg.seed, "init", generation), dim=vector_dim(cfg.data), channels=model.image_channels,
        )
    elif init == "previous" and previous is not None:
        model.unet = load_model(previous).unet
    model.unet.requires_grad_(True)
    return on_device(model, cfg, device)


def process_for(cfg: ChainConfig, model: T2IModel) -> Process:
    """The diffusion process the chain trains and samples ``model`` with: ``model.objective``, where eps
    or v is read from the model's own scheduler (a pretrained v-prediction pipeline stays v)."""
    objective = cfg.model.objective if cfg.model.objective in ("flow", "dae") else objective_of(model)
    return make_process(objective, model.noise_scheduler, sampler=cfg.sample.scheduler,
                        snr_gamma=cfg.train.snr_gamma, t_sampling=cfg.train.t_sampling, dae_sigma=cfg.train.dae_sigma)
