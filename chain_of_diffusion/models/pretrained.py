"""Pretrained Stable Diffusion pipelines: a local diffusers folder or a Hub id, offline-aware.

``model.pretrained`` names either a folder holding a diffusers pipeline (``model_index.json``,
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) or a Hub id such as
``stable-diffusion-v1-5/stable-diffusion-v1-5``. A Hub id is looked up in the local Hugging Face
cache first; only where the Hub is reachable (``HF_HUB_OFFLINE`` unset) are missing files
downloaded. Where the weights are missing the error says what to download and where it must go.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from chain_of_diffusion.errors import ModelLoadError

if TYPE_CHECKING:
    from chain_of_diffusion.models.build import T2IModel

# What a chain needs of a pipeline repository; the safety checker and fp16/ckpt duplicates are
# left out, which for SD 1.5 is 4 GB instead of 40.
PIPELINE_FILES = [
    "model_index.json",
    "scheduler/*.json",
    "tokenizer/*",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
]
_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _download_hint(repo_id: str) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    includes = " ".join(f"'{p}'" for p in PIPELINE_FILES)
    return (
        f"on a machine with internet run `hf download {repo_id} --include {includes}` and copy its "
        f"models--{repo_id.replace('/', '--')} folder into {HF_HUB_CACHE}, or set model.pretrained to a "
        f"local pipeline folder"
    )


def looks_like_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a Hub id (namespace/name), not of a path."""
    return not name.startswith((".", "/", "~")) and name.count("/") == 1


def find_pretrained(name: str, tried: Sequence[Path] = ()) -> Optional[Path]:
    """The local folder of pipeline ``name`` without downloading anything: the first folder of
    ``tried`` that exists (default: ``name`` itself, from the working directory), else, for a name
    of the Hub-id form, its snapshot in the Hugging Face cache. None for a Hub id that is not cached
    while the Hub may be reachable (the loader downloads it); a one-line ModelLoadError naming the
    folders tried where it cannot be found."""
    from chain_of_diffusion.bases import base_folder, is_base_name, spec_of
    from chain_of_diffusion.models.continued import fetch_generation, parse_ref

    if parse_ref(name):  # a generation of a chain on the Hub: its files (downloaded where reachable)
        return fetch_generation(name)[0]
    if is_base_name(name):  # a base made here: its cache folder, None until it is built
        folder = base_folder(spec_of(name))
        return folder if folder.is_dir() else None
    tried = [Path(p) for p in tried] or [Path(name).expanduser().absolute()]
    for folder in tried:
        if folder.exists():
            if not folder.is_dir():
                raise ModelLoadError(f"model.pretrained: {folder} is a file, not a diffusers pipeline folder")
            return folder
    where = f"no folder {' or '.join(str(p) for p in tried)}"
    if not looks_like_hub_id(name):
        raise ModelLoadError(
            f"model.pretrained: {name!r} is neither an existing folder nor a Hub id of the form owner/name ({where})"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, allow_patterns=PIPELINE_FILES, local_files_only=True))
    except LocalEntryNotFoundError:
        if not _hub_offline():
            return None
    raise ModelLoadError(
        f"model.pretrained: {name!r} is not a local folder ({where}) and, as a Hub id, not in the Hugging Face "
        f"cache, and this machine is offline (HF_HUB_OFFLINE=1); {_download_hint(name)}"
    )


def resolve_pretrained(name: str) -> Path:
    """The local folder of pipeline ``name`` (a folder path or a Hub id), downloading only if online."""
    folder = find_pretrained(name)
    if folder is not None:
        return folder
    from chain_of_diffusion.bases import is_base_name

    if is_base_name(name):
        raise ModelLoadError(f"model.pretrained: {name} is not built yet; run python scripts/pretrain_base.py "
                             "(scripts/chain.py builds it before the first stage)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = snapshot_download(name, allow_patterns=PIPELINE_FILES)
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"model.pretrained: {name!r} is not in the Hugging Face cache and the Hub cannot be reached; "
            f"{_download_hint(name)}"
        ) from None
    except HfHubHTTPError as err:
        raise ModelLoadError(f"model.pretrained: {name!r}: {str(err).splitlines()[0]}") from None
    return Path(path)


def is_pixel_space(folder: Path) -> bool:
    """Whether the pipeline folder's UNet denoises pixels, RGB or grey (no VAE: the bases made here)."""
    import json

    try:
        config = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return not (folder / "vae").is_dir() and config.get("in_channels") in (1, 3)


def check_complete(folder: Path, name: str) -> None:
    """A one-line ModelLoadError naming the sub-folders a pipeline folder lacks."""
    from chain_of_diffusion.bases import check_base_folder

    check_base_folder(folder)
    parts = [p for p in _PARTS if p != "vae" or not is_pixel_space(folder)]
    missing = [part for part in parts if not (folder / part).is_dir()]
    if missing:
        hint = _download_hint(name) if not Path(name).expanduser().exists() else "it is not a complete pipeline"
        raise ModelLoadError(f"model.pretrained: {folder} has no {', '.join(p + '/' for p in missing)}; {hint}")


def load_pretrained(name: str) -> T2IModel:
    """Load the UNet, VAE, text encoder, tokenizer and training scheduler of pipeline ``name``.

    The noise schedule and ``prediction_type`` (epsilon or v_prediction, SD 1.x vs 2.x) come from
    the pipeline's scheduler config, so training matches how the model was pretrained.
    """
    from chain_of_diffusion.models.build import load_model
    from chain_of_diffusion.models.continued import parse_ref

    if parse_ref(name):
        return load_generation(name)
    folder = resolve_pretrained(name)
    check_complete(folder, name)
    model = load_model(folder)
    prediction = model.noise_scheduler.config.prediction_type
    if prediction not in ("epsilon", "v_prediction"):
        raise ModelLoadError(
            f"model.pretrained: {folder}: scheduler prediction_type {prediction!r} is not supported "
            "(epsilon or v_prediction)"
        )
    return model


def load_generation(name: str) -> T2IModel:
    """The model of generation ``name`` refers to, with a LoRA generation fused into its chain's base."""
    from chain_of_diffusion.models.build import load_model
    from chain_of_diffusion.models.continued import fetch_generation
    from chain_of_diffusion.models.lora import fuse_saved_lora

    folder, chain = fetch_generation(name)
    if chain.get("train_mode") != "lora":
        return load_model(folder)
    base = chain.get("base_model")
    if not base:
        raise ModelLoadError(f"model.pretrained: {name} is a LoRA on a base that is not on the Hub (a local "
                             "pipeline); only LoRA chains on a Hub base can be continued from the Hub")
    model = load_pretrained(base)
    fuse_saved_lora(model.unet, folder)
    return model


def as_pipeline(model: T2IModel):
    """``model``'s networks (shared, not copied) as a ``StableDiffusionPipeline``."""
    from diffusers import StableDiffusionPipeline

    if model.vae is None:
        raise ModelLoadError("a pixel-space model has no VAE; use a latent layout (tiny_sd, sd15)")
    return StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=model.noise_scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(model: T2IModel, folder: str | Path) -> Path:
    """Write ``model`` as a ``StableDiffusionPipeline`` folder that diffusers loads as is."""
    as_pipeline(model).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def objective_of(model: T2IModel) -> str:
    """The training objective the model's scheduler implies: ``eps`` or ``v``."""
    return "v" if model.noise_scheduler.config.prediction_type == "v_prediction" else "eps"
