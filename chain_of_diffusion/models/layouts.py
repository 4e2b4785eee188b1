"""The named model layouts as plain data, and the image sizes a model can take (no torch).

:mod:`chain_of_diffusion.models.build` builds networks from these tables; the pre-flight check
(:mod:`chain_of_diffusion.preflight`) reads them, or a pretrained pipeline's ``config.json`` files,
to refuse a ``data.resolution`` the model cannot take before any work, without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

from chain_of_diffusion.errors import ConfigError

# Layouts. tiny: fast enough to train from scratch on 2 CPU cores (cross-attention only at the
# lowest resolution, where it is cheap); small: the same shape wider, for 32-64 px; sd15: the
# Stable Diffusion 1.5 UNet/VAE/CLIP-L layout with random weights, for throughput work;
# tiny_sd: Stable Diffusion's shape (latent UNet, 8x VAE, CLIP text tower) at toy width, the
# stand-in for a pretrained pipeline in tests and CPU benchmarks; rf_cifar: the CIFAR-10 UNet of Liu et
# al.'s rectified flow (128 channels, multipliers 1,2,2,2, 2 residual blocks, attention at 16x16 for
# 32 px) in diffusers' blocks, for the from-scratch experiments at their scale (on GPUs).
LATENT_ARCHS = ("sd15", "tiny_sd")
UNET_LAYOUTS = {
    "tiny": dict(
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=8,
        norm_num_groups=8,
    ),
    "tiny_sd": dict(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        attention_head_dim=8,
        norm_num_groups=8,
    ),
    "small": dict(
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        attention_head_dim=8,
        norm_num_groups=16,
    ),
    "rf_cifar": dict(
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        attention_head_dim=64,
        norm_num_groups=32,
    ),
    "sd15": dict(
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        attention_head_dim=8,
        norm_num_groups=32,
    ),
}
# the VAE of the latent layouts: 4 encoder blocks, each but the last halving the image (8x)
VAE_BLOCKS = 4


def vae_scale_of(vae_config: Optional[Mapping]) -> int:
    """Pixels per latent pixel along one side for a VAE config (``block_out_channels``: each
    encoder block but the last halves the image); 1 without a VAE (pixel space)."""
    if not vae_config:
        return 1
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def unet_multiple_of(unet_config: Mapping) -> int:
    """What the UNet's input size must be a multiple of: 2 per down-sampling level (every down
    block but the last halves its input, as diffusers' UNet2DConditionModel builds them)."""
    return 2 ** (len(unet_config["down_block_types"]) - 1)


def layout_scales(arch: str) -> tuple[int, int]:
    """(VAE scale, UNet multiple) of the built layout ``arch``; (1, 1) for the point layouts."""
    if arch not in UNET_LAYOUTS:
        return 1, 1
    vae = 2 ** (VAE_BLOCKS - 1) if arch in LATENT_ARCHS else 1
    return vae, unet_multiple_of(UNET_LAYOUTS[arch])


def check_resolution(resolution: int, vae_scale: int, unet_multiple: int, model: str) -> None:
    """A one-line :class:`ConfigError` naming ``data.resolution`` and the multiple it must be where
    ``model`` (its name in the message) cannot take images of ``resolution`` pixels a side: the VAE
    must map them to whole latents and the UNet must halve those ``log2(unet_multiple)`` times."""
    multiple = vae_scale * unet_multiple
    if resolution % multiple == 0:
        return
    why = []
    if vae_scale > 1:
        why.append(f"its VAE makes {vae_scale}x{vae_scale} pixels one latent")
    levels = unet_multiple.bit_length() - 1
    why.append(f"its UNet halves the {'latents' if vae_scale > 1 else 'image'} {levels} time{'s' * (levels != 1)}")
    below, above = resolution // multiple * multiple, (resolution // multiple + 1) * multiple
    nearest = f"{below} or {above}" if below > 0 else str(above)
    raise ConfigError(
        f"config key 'data.resolution': {resolution} does not fit {model}; it must be a multiple of "
        f"{multiple} ({' and '.join(why)}), e.g. {nearest}"
    )
