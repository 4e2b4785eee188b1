"""DINOv2 image features, the space dgm-eval measures generative models in (Stein et al. 2023,
"Exposing flaws of generative model evaluation metrics and their unfair treatment of diffusion
models": Fréchet distance in DINOv2 ViT-L/14 features agrees with human judgement where Inception
FID does not).

``metrics.dinov2_model`` names a transformers ``Dinov2Model``: a local folder (``save_pretrained``
layout: config.json + model.safetensors) or a Hub id (default ``facebook/dinov2-large``) found in
the Hugging Face cache, or downloaded where the network allows it and ``HF_HUB_OFFLINE`` is unset.
Where it cannot be loaded, :class:`Dinov2WeightsError` says so in one line; there is no
random-weight fallback.

Features are dgm-eval's: the CLS token of the last layer after the final layernorm
(``pooler_output``; torch hub's ``x_norm_clstoken``), 1024-d for ViT-L/14. Preprocessing is
dgm-eval's too: the image as 8-bit RGB (what a PNG holds), PIL bicubic resize to 224 x 224, then
ImageNet mean/std. The checkpoint's 518-px position embeddings are interpolated to the 16 x 16 patch
grid by the model itself, as torch hub's DINOv2 does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from chain_of_diffusion.errors import ConfigError

DEFAULT_MODEL = "facebook/dinov2-large"
INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOW_TO_GET = (f"`hf download {DEFAULT_MODEL}` where there is a network (into the Hugging Face cache), "
              f"or set metrics.dinov2_model to a local folder with config.json and model.safetensors")


class Dinov2WeightsError(ConfigError):
    """The DINOv2 model could not be found or loaded (one line for the terminal)."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _looks_like_path(value: str) -> bool:
    """A Hub id is ``name`` or ``org/name``; anything else the user meant as a folder."""
    return value.startswith(("/", ".", "~")) or value.count("/") > 1 or (os.sep != "/" and os.sep in value)


def find_dinov2_model(value: str | None) -> str:
    """What ``from_pretrained`` should load for ``metrics.dinov2_model``: a local folder, or a Hub id
    that is in the Hugging Face cache (or downloadable: not offline). Checks files only, loads nothing.

    Raises:
        Dinov2WeightsError: a folder without config.json, a path that does not exist, or (offline)
            a Hub id that is not in the cache; the message names what was looked for and how to get it.
    """
    if not value:
        raise Dinov2WeightsError(f"metrics.dinov2_model is empty; fd_dinov2 needs a DINOv2 model: {HOW_TO_GET}")
    local = Path(value).expanduser()
    if local.is_dir():
        config = local / "config.json"
        if not config.is_file():
            raise Dinov2WeightsError(f"metrics.dinov2_model={value}: folder has no config.json "
                                     f"(a Dinov2Model saved with save_pretrained); {HOW_TO_GET}")
        _check_model_type(value, config)
        return str(local)
    if local.exists():
        raise Dinov2WeightsError(f"metrics.dinov2_model={value}: a file; give the folder holding config.json "
                                 f"and model.safetensors")
    if _looks_like_path(value):
        raise Dinov2WeightsError(f"metrics.dinov2_model={value}: no such folder; {HOW_TO_GET}")
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        cached = try_to_load_from_cache(value, "config.json")
    except ValueError:  # not a valid repo id (HFValidationError)
        cached = None
    if isinstance(cached, str):
        _check_model_type(value, Path(cached))
    elif _offline():
        raise Dinov2WeightsError(
            f"metrics.dinov2_model={value!r}: not a local folder and not in the Hugging Face cache "
            f"({HF_HUB_CACHE}; HF_HUB_OFFLINE is set); {HOW_TO_GET}"
        )
    return value


def _check_model_type(value: str, config: Path) -> None:
    """Refuse another architecture before from_pretrained would build a DINOv2 from its config and
    fill the weights it lacks at random (with a screen of warnings)."""
    import json

    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        raise Dinov2WeightsError(f"metrics.dinov2_model={value}: {config} is not a JSON model config") from None
    if model_type != "dinov2":
        raise Dinov2WeightsError(f"metrics.dinov2_model={value}: a {model_type!r} model, not 'dinov2'; {HOW_TO_GET}")


def load_dinov2(value: str | None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """transformers' ``Dinov2Model`` from ``metrics.dinov2_model``, float32, in eval mode on ``device``."""
    source = find_dinov2_model(value)  # before importing transformers: a missing model fails fast
    from transformers import Dinov2Model

    try:
        model, info = Dinov2Model.from_pretrained(source, local_files_only=_offline() or Path(source).is_dir(),
                                                  dtype=torch.float32, output_loading_info=True)
    except Exception as err:  # OSError, Hub errors, bad safetensors: all mean "no usable weights here"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise Dinov2WeightsError(f"metrics.dinov2_model={value!r}: cannot load a Dinov2Model ({first[:200]}); "
                                 f"{HOW_TO_GET}") from None
    # from_pretrained fills missing weights with random ones and only warns: refuse that substitute
    missing = list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])
    if missing:
        raise Dinov2WeightsError(f"metrics.dinov2_model={value!r}: not a DINOv2 checkpoint ({len(missing)} weights "
                                 f"missing or of another shape, e.g. {str(missing[0])[:80]}); {HOW_TO_GET}")
    return model.to(device).eval()


def preprocess(images: Tensor | Sequence[Tensor]) -> Tensor:
    """Images in [-1, 1] ((N, C, H, W) or a list of (C, H, W), C = 1 or 3, any sizes) -> (N, 3, 224, 224)
    float32, as dgm-eval prepares a PNG for DINOv2: 8-bit RGB, PIL bicubic resize, ImageNet mean/std."""
    from PIL import Image

    from chain_of_diffusion.data.imageset import tensor_to_pil

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = []
    for im in (images.unbind(0) if isinstance(images, Tensor) else images):
        pil = tensor_to_pil(im.unsqueeze(0))[0].convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out.append((pixels - mean) / std)
    return torch.stack(out)


@torch.no_grad()
def dinov2_features(model: torch.nn.Module, images: Tensor | Sequence[Tensor], batch_size: int = 64) -> Tensor:
    """CLS features (``pooler_output``) of images in [-1, 1]: N images -> (N, hidden_size) float32 CPU.

    The network always sees exactly ``batch_size`` images (the last batch padded), so an image's
    features do not depend on its batch mates or on how the set was split over processes."""
    from chain_of_diffusion.batching import fixed_batches

    items = list(images.unbind(0)) if isinstance(images, Tensor) else list(images)
    if not items:
        return torch.empty(0, 0)
    device = next(model.parameters()).device

    def encode(positions: Tensor) -> Tensor:
        # preprocessed per batch: at 224 x 224 float32 a whole set would hold 0.6 MB per image
        pixels = preprocess([items[i] for i in positions.tolist()])
        return model(pixel_values=pixels.to(device)).pooler_output.float().cpu()

    return fixed_batches(encode, batch_size, torch.arange(len(items)))
