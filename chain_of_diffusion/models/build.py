"""The text-to-image model as diffusers components, built from a named layout or loaded from a folder.

A model is a ``UNet2DConditionModel``, a CLIP text encoder with its tokenizer, the training noise
scheduler, and a VAE only where the layout works in latent space (``sd15``). A checkpoint folder
uses the diffusers pipeline sub-folder names (``unet/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``, ``vae/``), so each part loads with ``from_pretrained(folder, subfolder=...)``.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from chain_of_diffusion.batching import TEXT_ROWS, VAE_ROWS, fixed_batches
from chain_of_diffusion.config import VECTOR_ARCHS, ModelConfig
from chain_of_diffusion.errors import ModelLoadError
from chain_of_diffusion.models.layouts import LATENT_ARCHS, UNET_LAYOUTS, VAE_BLOCKS, vae_scale_of
from chain_of_diffusion.models.vector import VectorDenoiser

MAX_TOKENS = 77  # CLIP's context length, as Stable Diffusion uses it


@dataclass
class T2IModel:
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    vae: Optional[AutoencoderKL] = None
    # pixels per side of the images it renders (the chain sets data.resolution); None: what the
    # UNet was built for (its config's sample_size, times the VAE scale)
    resolution: Optional[int] = None

    def to(self, device: torch.device | str) -> T2IModel:
        """Move every network to ``device``; returns the model."""
        for net in (self.unet, self.text_encoder, self.vae):
            if net is not None:
                net.to(device)
        return self

    @property
    def image_channels(self) -> int:
        """Colour channels of the images it trains on and renders: the VAE's, else the pixel UNet's."""
        return (self.vae or self.unet).config.get("in_channels", 3)  # points: unused

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one example in the space the UNet denoises: (C, H, W) of pixels or latents, (d,) of points."""
        if isinstance(self.unet, VectorDenoiser):
            return self.unet.sample_shape
        size = self.unet.config.sample_size if self.resolution is None else self.resolution // self.vae_scale
        return (self.latent_channels, size, size)

    @property
    def vae_scale(self) -> int:
        """Pixels per latent pixel along one side (1 in pixel space)."""
        return vae_scale_of(None if self.vae is None else self.vae.config)


@lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's BPE vocabulary and merges, read from the copy open_clip ships in its wheel.

    The result tokenizes exactly like ``openai/clip-vit-large-patch14``'s tokenizer, with no
    download.
    """
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tokenizer() -> CLIPTokenizer:
    vocab, merges = _clip_bpe()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=MAX_TOKENS)


def _text_config(cfg: ModelConfig, vocab_size: int) -> CLIPTextConfig:
    if cfg.arch == "sd15":  # CLIP ViT-L/14's text tower
        return CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=MAX_TOKENS, projection_dim=768,
        )
    width = cfg.text_hidden_size
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, projection_dim=width,
    )


def build_unet(cfg: ModelConfig, resolution: int, cross_attention_dim: int, seed: int,
               dim: Optional[int] = None, channels: int = 3) -> UNet2DConditionModel | VectorDenoiser:
    """A UNet of layout ``cfg.arch`` with random weights drawn from ``seed`` (``channels``: of the pixels
    a pixel-space layout denoises); for the point layouts (mlp, linear) the denoiser of
    ``dim``-dimensional points instead."""
    latent = cfg.arch in LATENT_ARCHS
    torch.manual_seed(seed)  # diffusers initialises from the global generator
    if cfg.arch in VECTOR_ARCHS:
        return VectorDenoiser(dim=dim, linear=cfg.arch == "linear", cross_attention_dim=cross_attention_dim)
    return UNet2DConditionModel(
        sample_size=resolution // 8 if latent else resolution,
        in_channels=4 if latent else channels,
        out_channels=4 if latent else channels,
        cross_attention_dim=cross_attention_dim,
        **UNET_LAYOUTS[cfg.arch],
    )


def build_model(cfg: ModelConfig, resolution: int, seed: int, dim: Optional[int] = None,
                channels: int = 3) -> T2IModel:
    """A model of layout ``cfg.arch`` with random weights drawn from ``seed`` (``dim``: the points'
    dimension for the point layouts; ``channels``: the images' colour channels in pixel space)."""
    tokenizer = build_tokenizer()
    text_config = _text_config(cfg, len(tokenizer))
    vae = None
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config)
    if cfg.arch in LATENT_ARCHS:
        sd15 = cfg.arch == "sd15"
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * VAE_BLOCKS, up_block_types=("UpDecoderBlock2D",) * VAE_BLOCKS,
            block_out_channels=(128, 256, 512, 512) if sd15 else (8, 16, 16, 16),
            layers_per_block=2 if sd15 else 1, norm_num_groups=32 if sd15 else 8, sample_size=resolution,
        )
    unet = build_unet(cfg, resolution, text_config.hidden_size, seed + 1, dim, channels)
    # latent layouts take Stable Diffusion's own schedule, so a tiny_sd pipeline behaves like SD's
    schedule = (
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
        if cfg.arch in LATENT_ARCHS else dict(beta_schedule=cfg.beta_schedule)
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        prediction_type="v_prediction" if cfg.objective == "v" else "epsilon",  # flow, dae: unused
        clip_sample=False,
        **schedule,
    )
    return T2IModel(unet, text_encoder.eval(), tokenizer, scheduler, vae)


def save_model(model: T2IModel, folder: str | Path) -> None:
    """Write the model in diffusers sub-folders (safetensors weights + JSON configs)."""
    folder = Path(folder)
    model.unet.save_pretrained(folder / "unet", safe_serialization=True)
    model.noise_scheduler.save_pretrained(folder / "scheduler")
    model.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    model.tokenizer.save_pretrained(folder / "tokenizer")
    if model.vae is not None:
        model.vae.save_pretrained(folder / "vae", safe_serialization=True)


def load_model(folder: str | Path) -> T2IModel:
    """Load a model saved by :func:`save_model` or a diffusers Stable Diffusion pipeline folder."""
    folder = parts = Path(folder)
    if not (folder / "unet").is_dir():
        raise ModelLoadError(f"{folder}: no unet/ folder (not a model checkpoint)")
    try:
        saved_class = json.loads((folder / "unet" / "config.json").read_text()).get("_class_name")
        unet_class = VectorDenoiser if saved_class == VectorDenoiser.__name__ else UNet2DConditionModel
        unet = unet_class.from_pretrained(folder, subfolder="unet")
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        text_encoder = CLIPTextModel.from_pretrained(parts, subfolder="text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(parts, subfolder="tokenizer")
        vae = AutoencoderKL.from_pretrained(parts, subfolder="vae") if (parts / "vae").is_dir() else None
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{folder}: cannot load model ({str(err).splitlines()[0]})") from None
    return T2IModel(unet.eval(), text_encoder.eval(), tokenizer, scheduler, vae)


def set_attention(unet: UNet2DConditionModel, mode: str, device: torch.device) -> str:
    """Choose the attention kernel: ``sdpa`` (PyTorch), ``xformers``, or ``auto`` (xformers on CUDA
    when it imports, else SDPA). Asking for xformers where it cannot run is an error, not a
    silent fallback. Returns the kernel used ("none" for a point denoiser, which has no attention)."""
    if isinstance(unet, VectorDenoiser):
        return "none"
    if mode == "auto":
        if device.type != "cuda":
            return "sdpa"
        try:
            import xformers  # noqa: F401
        except ImportError:
            return "sdpa"
        mode = "xformers"
    if mode == "xformers":
        if device.type != "cuda":
            raise ModelLoadError("train.attention=xformers needs a CUDA device (xformers has no CPU kernels)")
        try:
            unet.enable_xformers_memory_efficient_attention()
        except (ImportError, ModuleNotFoundError, ValueError) as err:
            raise ModelLoadError(f"train.attention=xformers: {str(err).splitlines()[0]}") from None
        return "xformers"
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    return "sdpa"


@torch.no_grad()
def encode_captions(model: T2IModel, captions: list[str]) -> torch.Tensor:
    """Captions -> CLIP last hidden states (N, 77, D), as Stable Diffusion conditions on them."""
    device = next(model.text_encoder.parameters()).device
    if not captions:
        return torch.empty(0)
    ids = model.tokenizer(
        list(captions), padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt",
    ).input_ids
    return fixed_batches(lambda chunk: model.text_encoder(chunk.to(device))[0].float().cpu(), TEXT_ROWS, ids)


@torch.no_grad()
def encode_images(model: T2IModel, images: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> what the UNet denoises: latents (scaled) with a VAE, else the pixels, as
    many channels as the model takes (image sets on disk are RGB; grey from RGB as PIL's ``convert("L")``)."""
    if images.ndim == 4 and images.shape[1] != model.image_channels:
        images = as_channels(images, model.image_channels)
    if model.vae is None:
        return images
    device = next(model.vae.parameters()).device
    dtype = next(model.vae.parameters()).dtype

    def encode(chunk: torch.Tensor) -> torch.Tensor:
        mean = model.vae.encode(chunk.to(device, dtype)).latent_dist.mean
        return (mean * model.vae.config.scaling_factor).float().cpu()

    return fixed_batches(encode, VAE_ROWS, images)


def as_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, channels, H, W): RGB to luma with ITU-R 601 weights, or grey repeated."""
    if channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
        return (images * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    return images.expand(-1, channels, -1, -1).contiguous()


@torch.no_grad()
def decode_latents(model: T2IModel, latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_images`: -> pixels in [-1, 1]."""
    if model.vae is None:
        return latents
    scaled = latents / model.vae.config.scaling_factor
    return fixed_batches(lambda chunk: model.vae.decode(chunk).sample.clamp(-1, 1), VAE_ROWS, scaled)
