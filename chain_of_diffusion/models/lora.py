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
from diffusers.utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
)
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from chain_of_diffusion.checkpoints import whole
from chain_of_diffusion.config import TrainConfig

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' default weight name
ADAPTER = "default"


def lora_config(cfg: TrainConfig, text_encoder: bool = False) -> LoraConfig:
    targets = cfg.lora_text_encoder_modules if text_encoder else cfg.lora_target_modules
    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha or cfg.lora_rank,
        lora_dropout=cfg.lora_dropout,
        init_lora_weights="gaussian",
        target_modules=list(targets),
    )


def add_lora(net: torch.nn.Module, cfg: TrainConfig, seed: int, *, text_encoder: bool = False) -> list[torch.nn.Parameter]:
    """Freeze ``net`` (the UNet, or the CLIP text encoder with ``text_encoder=True``) and attach a
    fresh adapter (A drawn from ``seed``, B zero); returns its parameters, cast to fp32 whatever the
    base's dtype, since fp16 trainables break grad scaling."""
    net.requires_grad_(False)
    torch.manual_seed(seed)  # peft initialises A from the global generator
    net.add_adapter(lora_config(cfg, text_encoder), adapter_name=ADAPTER)
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        key = "lora_text_encoder_modules" if text_encoder else "lora_target_modules"
        targets = cfg.lora_text_encoder_modules if text_encoder else cfg.lora_target_modules
        raise ValueError(f"train.{key}={list(targets)} matched no module of the {type(net).__name__}")
    for p in params:
        p.data = p.data.float()
    return params


def lora_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The adapter's weights in peft's key names (``...to_q.lora_A.weight``; no ``unet.`` prefix), which
    diffusers' loaders read as they are. Not converted to the older ``lora.down``/``lora.up`` names:
    diffusers converts only linear layers, so an adapter on convolutions too came out with two key styles,
    and its loader then dropped every linear layer's weights (a LoRA on attention + resnets lost its
    attention half at sampling)."""
    return get_peft_model_state_dict(unet, adapter_name=ADAPTER)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: whole(v.detach()).float().cpu().contiguous() for k, v in state.items()}


def lora_layers(unet: UNet2DConditionModel, text_encoder=None) -> dict[str, dict[str, torch.Tensor]]:
    """The adapters' weights (the UNet's and, if given, the text encoder's), whole, on the CPU in fp32, as
    ``save_lora_weights`` takes them. Where FSDP sharded them, gathering them is a collective: every
    process calls this, and the main process saves."""
    layers = {"unet_lora_layers": _cpu(lora_state_dict(unet))}
    if text_encoder is not None:
        te_state = get_peft_model_state_dict(text_encoder, adapter_name=ADAPTER)
        layers["text_encoder_lora_layers"] = _cpu(convert_state_dict_to_diffusers(te_state))
    return layers


def _metadata(config: LoraConfig) -> dict:
    """The adapter config as saved beside the weights, sets sorted: peft keeps target_modules as a set,
    whose order changes with each interpreter's string hashing, so the same adapter was another file."""
    return {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in config.to_dict().items()}


def save_lora(unet: UNet2DConditionModel, folder: str | Path, cfg: TrainConfig, text_encoder=None,
              layers: dict | None = None) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` (UNet and, if given, text-encoder
    adapters) with the adapter configs as metadata. ``layers``: :func:`lora_layers`, where already gathered."""
    layers = layers or lora_layers(unet, text_encoder)
    metadata = {"unet_lora_adapter_metadata": _metadata(lora_config(cfg))}
    if "text_encoder_lora_layers" in layers:
        metadata["text_encoder_lora_adapter_metadata"] = _metadata(lora_config(cfg, text_encoder=True))
    StableDiffusionPipeline.save_lora_weights(str(folder), safe_serialization=True, **layers, **metadata)
    return Path(folder) / LORA_WEIGHTS


def _read(folder: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    state, _ = StableDiffusionPipeline.lora_state_dict(str(folder))
    return {k.removeprefix(prefix + "."): v for k, v in state.items() if k.startswith(prefix + ".")}


def read_lora(folder: str | Path) -> dict[str, torch.Tensor]:
    """The UNet part of a diffusers-format LoRA folder, in peft key names."""
    unet_state = _read(folder, "unet")
    if not unet_state:
        raise ValueError(f"{folder}: the LoRA file holds no UNet weights")
    return convert_unet_state_dict_to_peft(unet_state)


def _set(net: torch.nn.Module, state: dict[str, torch.Tensor], folder) -> None:
    result = set_peft_model_state_dict(net, state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{folder}: LoRA weights do not fit the adapter ({unexpected[0]} and others)")


def load_lora_into(unet: UNet2DConditionModel, folder: str | Path, text_encoder=None) -> None:
    """Copy a saved adapter's weights into the attached adapters (same rank and targets)."""
    _set(unet, read_lora(folder), folder)
    if text_encoder is not None:
        te_state = convert_state_dict_to_peft(_read(folder, "text_encoder"))
        if not te_state:
            raise ValueError(f"{folder}: the LoRA file holds no text-encoder weights")
        _set(text_encoder, te_state, folder)


def attach_saved_lora(unet: UNet2DConditionModel, folder: str | Path, text_encoder=None) -> None:
    """Load a saved LoRA for inference the way diffusers pipelines do (``load_lora_adapter``, and
    ``load_lora_into_text_encoder`` where the file holds a text-encoder adapter)."""
    unet.load_lora_adapter(str(folder), prefix="unet", adapter_name=ADAPTER, weight_name=LORA_WEIGHTS)
    if text_encoder is not None:
        state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(str(folder), return_lora_metadata=True)
        if any(k.startswith("text_encoder.") for k in state):
            StableDiffusionPipeline.load_lora_into_text_encoder(
                state, alphas, text_encoder, prefix="text_encoder", adapter_name=ADAPTER, metadata=metadata,
            )


def fuse_saved_lora(unet: UNet2DConditionModel, folder: str | Path) -> None:
    """Merge a saved LoRA into the UNet's own weights and drop the adapter (diffusers' ``fuse_lora``
    then ``unload_lora``): the result is a plain UNet, e.g. the base of a chain that continues a
    LoRA generation."""
    attach_saved_lora(unet, folder)
    unet.fuse_lora(lora_scale=1.0)
    unet.unload_lora()


KOHYA_METADATA = {"format": "pt", "ss_network_module": "networks.lora"}  # what kohya's loaders look for


def kohya_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """A saved LoRA in the kohya / A1111 key format (``lora_unet_..._to_q.lora_down.weight`` plus an
    ``alpha`` per module), through diffusers' ``convert_state_dict_to_kohya``."""
    from diffusers.utils import convert_state_dict_to_kohya

    kohya = convert_state_dict_to_kohya({"unet." + k: v for k, v in read_lora(folder).items()})
    return {k: v.contiguous() for k, v in kohya.items()}


def kohya_bytes(folder: str | Path) -> bytes:
    """:func:`kohya_state` as the bytes of a safetensors file."""
    from safetensors.torch import save

    return save(kohya_state(folder), metadata=KOHYA_METADATA)
