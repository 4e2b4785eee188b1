"""CLIP score and CLIP image features with open-clip (model and pretrained weights configurable).

``pretrained`` is an open-clip tag (``openai``, ``laion2b_s34b_b79k``: from the Hub cache or the
Hub) or a local checkpoint file (a state dict saved with ``torch.save``). Where the weights cannot
be loaded, :class:`ClipWeightsError` says so in one line; there is no random-weight fallback.

CLIP score (Hessel et al. 2021, as torchmetrics computes it): 100 * max(cos(image, caption), 0),
averaged over the images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from chain_of_diffusion.errors import ConfigError


class ClipWeightsError(ConfigError):
    """The CLIP model or its weights could not be loaded (one line for the terminal)."""


@dataclass
class Clip:
    model: torch.nn.Module
    preprocess: object  # PIL image -> (3, S, S) tensor
    tokenizer: object  # list[str] -> (N, 77) token ids
    device: torch.device


def check_clip_weights(name: str, pretrained: str | None) -> None:
    """Raise :class:`ClipWeightsError` (one line) where :func:`load_clip` could not find the weights,
    without loading them: an unknown model or tag, a missing local file, or offline a tag whose
    Hub files are not in the Hugging Face cache. Online, a cached-or-downloadable tag passes."""
    import os

    import open_clip

    if name not in open_clip.list_models():
        raise ClipWeightsError(f"metrics.clip_model={name!r} is not an open-clip model (open_clip.list_models())")
    if pretrained is None or Path(pretrained).expanduser().is_file():
        return
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise ClipWeightsError(
            f"metrics.clip_pretrained={pretrained!r}: neither a file nor an open-clip tag of {name} "
            f"(tags: {', '.join(tags) or 'none'})"
        )
    repo = (open_clip.get_pretrained_cfg(name, pretrained).get("hf_hub") or "").strip("/")
    if not repo or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("0", "false", "no", ""):
        return
    from huggingface_hub import try_to_load_from_cache

    if not any(isinstance(try_to_load_from_cache(repo, f), str)
               for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")):
        raise ClipWeightsError(
            f"metrics.clip_pretrained={pretrained!r}: {name} weights are not in the Hugging Face cache and "
            f"HF_HUB_OFFLINE is set; `hf download {repo}` where there is a network, or give a local checkpoint file"
        )


def first_sentence(err: BaseException, limit: int = 160) -> str:
    """The first sentence of an error's first line, cut at a word (never mid-word) past ``limit``."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = text.split(". ")[0]
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


def load_clip(name: str, pretrained: str | None, device: str | torch.device = "cpu") -> Clip:
    """An open-clip model in eval mode; ``pretrained``: a tag, a local file path, or None (random)."""
    import open_clip

    if name not in open_clip.list_models():
        raise ClipWeightsError(f"metrics.clip_model={name!r} is not an open-clip model (open_clip.list_models())")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)  # open-clip logs its failures at ERROR on the root logger, then raises
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as err:  # open-clip raises RuntimeError/OSError/Hub errors; all mean "no weights here"
        raise ClipWeightsError(
            f"metrics.clip_pretrained={pretrained!r}: cannot load {name} weights ({first_sentence(err)}); "
            f"give a local checkpoint file or a tag already in the Hugging Face cache"
        ) from None
    finally:
        root.setLevel(level)
    model.eval()
    return Clip(model, preprocess, tokenizer, torch.device(device))


@torch.no_grad()
def clip_image_features(clip: Clip, images: Tensor | Sequence[Tensor], batch_size: int = 64) -> Tensor:
    """L2-normalised image embeddings: images in [-1, 1], (N, C, H, W) or a list -> (N, E) float32 CPU.

    The network always sees exactly ``batch_size`` images (the last batch padded), so an image's
    embedding does not depend on its batch mates or on how the set was split over processes."""
    from chain_of_diffusion.batching import fixed_batches
    from chain_of_diffusion.data.imageset import tensor_to_pil

    items = list(images.unbind(0)) if isinstance(images, Tensor) else list(images)
    if not items:
        return torch.empty(0, 0)
    pixels = torch.stack([clip.preprocess(tensor_to_pil(im.unsqueeze(0))[0].convert("RGB")) for im in items])

    def encode(batch: Tensor) -> Tensor:
        return torch.nn.functional.normalize(clip.model.encode_image(batch.to(clip.device)).float(), dim=-1).cpu()

    return fixed_batches(encode, batch_size, pixels)


@torch.no_grad()
def clip_text_features(clip: Clip, captions: Sequence[str], batch_size: int = 64) -> Tensor:
    """L2-normalised caption embeddings: N strings -> (N, E) float32 CPU (fixed-size batches)."""
    from chain_of_diffusion.batching import fixed_batches

    tokens = clip.tokenizer(list(captions))

    def encode(batch: Tensor) -> Tensor:
        return torch.nn.functional.normalize(clip.model.encode_text(batch.to(clip.device)).float(), dim=-1).cpu()

    return fixed_batches(encode, batch_size, tokens)


def clip_score(image_features: Tensor, text_features: Tensor) -> float:
    """Mean of 100 * max(cos, 0) over matching rows: (N, E), (N, E) L2-normalised -> float in [0, 100]."""
    if image_features.shape != text_features.shape or image_features.shape[0] == 0:
        raise ValueError(f"need matching non-empty (N, E) features, got {tuple(image_features.shape)} "
                         f"and {tuple(text_features.shape)}")
    cos = (image_features * text_features).sum(dim=1)
    return float((100.0 * cos.clamp(min=0)).double().mean())
