"""LoRA on the UNet's attention projections through peft, saved in the diffusers format.

The steps are those of diffusers' ``train_text_to_image_lora.py``: freeze the base, attach a peft
``LoraConfig`` with ``unet.add_adapter``, keep the base in the compute dtype and the LoRA
parameters in fp32, save with ``StableDiffusionPipeline.save_lora_weights`` so that
``StableDiffusionPipeline.from_pretrained(base).load_lora_weights(folder)`` loads the result.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from chain_of_diffusion.config import TrainConfig

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' default weight name
ADAPTER = "default"


def lora_config(cfg: TrainConfig) -> LoraConfig:
    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha or cfg.lora_rank,
        lora_dropout=cfg.lora_dropout,
        init_lora_weights="gaussian",
        target_modules=list(cfg.lora_target_modules),
    )


def add_lora(unet: UNet2DConditionModel, cfg: TrainConfig, seed: int) -> list[torch.nn.Parameter]:
    """Freeze ``unet`` and attach a fresh adapter (A drawn from ``seed``, B zero); returns its
    parameters, cast to fp32 whatever the base's dtype, since fp16 trainables break grad scaling."""
    unet.requires_grad_(False)
    torch.manual_seed(seed)  # peft initialises A from the global generator
    unet.add_adapter(lora_config(cfg), adapter_name=ADAPTER)
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            f"train.lora_target_modules={list(cfg.lora_target_modules)} matched no module of the UNet"
        )
    for p in params:
        p.data = p.data.float()
    return params


def lora_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The adapter's weights with diffusers' key names (no ``unet.`` prefix)."""
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=ADAPTER))


def save_lora(unet: UNet2DConditionModel, folder: str | Path, cfg: TrainConfig) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` with the adapter config as metadata."""
    weights = {k: v.detach().float().cpu().contiguous() for k, v in lora_state_dict(unet).items()}
    StableDiffusionPipeline.save_lora_weights(
        str(folder), unet_lora_layers=weights, safe_serialization=True,
        unet_lora_adapter_metadata=lora_config(cfg).to_dict(),
    )
    return Path(folder) / LORA_WEIGHTS


def read_lora(folder: str | Path) -> dict[str, torch.Tensor]:
    """The UNet part of a diffusers-format LoRA folder, in peft key names."""
    state, _ = StableDiffusionPipeline.lora_state_dict(str(folder))
    unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    if not unet_state:
        raise ValueError(f"{folder}: the LoRA file holds no UNet weights")
    return convert_unet_state_dict_to_peft(unet_state)


def load_lora_into(unet: UNet2DConditionModel, folder: str | Path) -> None:
    """Copy a saved adapter's weights into ``unet``'s attached adapter (same rank and targets)."""
    result = set_peft_model_state_dict(unet, read_lora(folder), adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{folder}: LoRA weights do not fit the adapter ({unexpected[0]} and others)")


def attach_saved_lora(unet: UNet2DConditionModel, folder: str | Path) -> None:
    """Load a saved LoRA for inference the way diffusers pipelines do (``load_lora_adapter``)."""
    unet.load_lora_adapter(str(folder), prefix="unet", adapter_name=ADAPTER, weight_name=LORA_WEIGHTS)
