"""Checks that need files or weights, run before any work (and before ``--dry-run`` prints).

:func:`chain_of_diffusion.config.validate` checks values only; whether the pretrained feature
networks a config asks for (Inception, CLIP, DINOv2) have their weights on this machine is a file
lookup, done here: nothing is loaded, nothing is written. Each check raises a one-line
:class:`~chain_of_diffusion.errors.ConfigError` (the CLIs print it and exit 2), so a chain does
not train for hours and then find no network to select or evaluate with.

The finders live with their networks in :mod:`chain_of_diffusion.metrics`; they are imported
when a check needs them (they pull in torch).
"""

from __future__ import annotations

from collections.abc import Iterable

from chain_of_diffusion.config import PRDC_NAMES, PRETRAINED_SPACES, ChainConfig, selection_space
from chain_of_diffusion.errors import ConfigError

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


def check_metric_weights(mcfg, names: Iterable[str]) -> None:
    """The DINOv2 model where the metrics ``names`` need it (fd_dinov2, or precision/recall/...
    with ``metrics.prdc_features=dinov2``); files only, nothing loaded."""
    names = set(names)
    prdc_in_dinov2 = mcfg.prdc_features == "dinov2" and names & set(PRDC_NAMES)
    if "fd_dinov2" in names or prdc_in_dinov2:
        check_space_weights("dinov2", mcfg)


def run_preflight(cfg: ChainConfig) -> None:
    """Every file/weights check of a chain config; raises a one-line ConfigError."""
    check_selection_weights(cfg)
    check_metric_weights(cfg.metrics, cfg.metrics.names)
