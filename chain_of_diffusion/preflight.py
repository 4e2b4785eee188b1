"""Checks that need files or weights, run before any work (and before ``--dry-run`` prints).

:func:`chain_of_diffusion.config.validate` checks values only; whether the pretrained pipeline
(``model.pretrained``) and the feature networks a config asks for (Inception, CLIP, DINOv2) have
their weights on this machine, and whether the model can take ``data.resolution``, are file
lookups, done here: nothing is loaded, nothing is written. Each check raises a one-line
:class:`~chain_of_diffusion.errors.ConfigError` (the CLIs print it and exit 2), so a chain does
not train for hours and then find no network to select or evaluate with.

The finders live with their networks in :mod:`chain_of_diffusion.metrics`; they are imported
when a check needs them (they pull in torch).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from chain_of_diffusion.config import (
    PRDC_NAMES,
    PRETRAINED_SPACES,
    ChainConfig,
    pretrained_candidates,
    selection_space,
    vector_dim,
)
from chain_of_diffusion.errors import ConfigError, ModelLoadError

# the selection methods that measure distances in select.features
DISTANCE_METHODS = ("greedy_entropy", "threshold_decay")


def check_space_weights(space: str, mcfg) -> None:
    """The finder's own one-line error where the network of feature space ``space`` (inception,
    clip, dinov2) has no weights here; the other spaces need none. ``mcfg``: the ``metrics`` config
    (inception_weights, clip_model, clip_pretrained, dinov2_model)."""
    if space == "inception":
        from chain_of_diffusion.metrics.inception import find_inception_weights

        find_inception_weights(mcfg.inception_weights)
    elif space == "clip":
        from chain_of_diffusion.metrics.clip import check_clip_weights

        check_clip_weights(mcfg.clip_model, mcfg.clip_pretrained)
    elif space == "dinov2":
        from chain_of_diffusion.metrics.dinov2 import find_dinov2_model

        find_dinov2_model(mcfg.dinov2_model)


def check_selection_weights(cfg: ChainConfig) -> None:
    """A one-line error naming ``select.features`` where selection measures distances in a
    pretrained space whose weights are not here."""
    space = selection_space(cfg)
    if space not in PRETRAINED_SPACES or cfg.select.method not in DISTANCE_METHODS:
        return
    try:
        check_space_weights(space, cfg.metrics)
    except ConfigError as err:
        raise ConfigError(
            f"config key 'select.features': {space!r} has no weights here ({err}); "
            f"spaces that need none: pixels, classifier, unet"
        ) from None


def check_metric_weights(mcfg, names: Iterable[str], every_space: bool = False) -> None:
    """The DINOv2 model where the metrics ``names`` need it (fd_dinov2, or precision/recall/...
    with ``metrics.prdc_features=dinov2``); with ``every_space`` also the Inception and CLIP weights
    (where no cached features can stand in: a new chain, two folders); files only, nothing loaded."""
    names = set(names)
    prdc_in_dinov2 = mcfg.prdc_features == "dinov2" and names & set(PRDC_NAMES)
    if "fd_dinov2" in names or prdc_in_dinov2:
        check_space_weights("dinov2", mcfg)
    if every_space:
        from chain_of_diffusion.metrics.suite import sample_spaces

        for space in sample_spaces(names, mcfg):
            if space != "dinov2":
                check_space_weights(space, mcfg)


def check_hub_token(cfg: ChainConfig) -> None:
    """With ``hub.repo_id`` set, a token for the pushes (HF_TOKEN or the cached login), unless offline
    (HF_HUB_OFFLINE=1: the pushes wait for scripts/push.py). Only whether one exists: it is not read."""
    if cfg.hub.repo_id is None:
        return
    from chain_of_diffusion.hub import has_token, is_offline

    if not is_offline() and not has_token():
        raise ConfigError(
            f"config key 'hub.repo_id': pushing to {cfg.hub.repo_id} needs a Hugging Face token with write access; "
            "set HF_TOKEN or run `hf auth login` (or set HF_HUB_OFFLINE=1 to run now and push later with "
            "scripts/push.py)"
        )


def check_model_files(cfg: ChainConfig, config_file: Optional[str | Path] = None) -> None:
    """``model.pretrained`` where it is set: found here (a folder, looked for where
    :func:`~chain_of_diffusion.config.pretrained_candidates` says, or a Hub id in the Hugging Face
    cache) and complete; and that the model can take ``data.resolution``: its VAE must make whole
    latents of it and its UNet halve those once per down-sampling level. Read from the layouts or the
    pipeline's ``unet/`` and ``vae/`` ``config.json``, no weights loaded. A Hub id that is not cached
    while the Hub may be reachable is downloaded and checked when the chain loads it.
    ``config_file``: the config file that set ``model.pretrained`` (its folder is the second place looked in)."""
    from chain_of_diffusion.models.layouts import (
        check_resolution,
        layout_scales,
        unet_multiple_of,
        vae_scale_of,
    )

    if vector_dim(cfg.data) is not None:  # points: no pixels
        return
    name = cfg.model.pretrained
    if not name:
        vae_scale, unet_multiple = layout_scales(cfg.model.arch)
        check_resolution(cfg.data.resolution, vae_scale, unet_multiple, f"model.arch={cfg.model.arch}")
        return
    from chain_of_diffusion.bases import is_base_name, spec_of
    from chain_of_diffusion.models.continued import fetch_generation, parse_ref
    from chain_of_diffusion.models.pretrained import check_complete, find_pretrained

    if parse_ref(name):  # a chain's generation on the Hub: it exists, and a LoRA's base is here too
        folder, chain = fetch_generation(name)
        if chain.get("train_mode") == "lora" and chain.get("base_model"):
            check_model_files(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model,
                                                                                  pretrained=chain["base_model"])))
        return
    folder = find_pretrained(name, pretrained_candidates(name, config_file))
    if folder is None and is_base_name(name):  # built before the first stage: its layout decides
        vae_scale, unet_multiple = layout_scales(spec_of(name).arch)
        check_resolution(cfg.data.resolution, vae_scale, unet_multiple, f"model.pretrained={name}")
        _check_channels(cfg, 3, name)  # the bases made here are RGB
        return
    if folder is None:
        return
    check_complete(folder, name)
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text()) if (folder / "vae").is_dir() else None
        vae_scale, unet_multiple = vae_scale_of(vae), unet_multiple_of(unet)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"model.pretrained: {folder}: cannot read unet/ or vae/ config.json ({err})") from None
    check_resolution(cfg.data.resolution, vae_scale, unet_multiple, f"model.pretrained={name}")
    _check_channels(cfg, (vae or unet).get("in_channels", 3), name)  # the VAE's, or the pixel UNet's


def _check_channels(cfg: ChainConfig, channels: int, name: str) -> None:
    """A data.channels set by hand must be what the pretrained pipeline renders."""
    if cfg.data.channels != "auto" and int(cfg.data.channels) != channels:
        raise ConfigError(f"config key 'data.channels': {cfg.data.channels}, but model.pretrained={name} renders "
                          f"{channels} channel(s); leave it at auto (the pipeline's own)")


def run_preflight(cfg: ChainConfig, origins: Optional[dict[str, str]] = None) -> None:
    """Every file/weights check of a chain config; raises a one-line ConfigError (or ModelLoadError).
    ``origins``: dotted key -> the config file that set it (:func:`~chain_of_diffusion.config.load_config`)."""
    from chain_of_diffusion.launch import check_accelerate_config

    check_accelerate_config(cfg)
    check_model_files(cfg, (origins or {}).get("model.pretrained"))
    check_selection_weights(cfg)
    check_metric_weights(cfg.metrics, cfg.metrics.names, every_space=True)
    check_hub_token(cfg)
