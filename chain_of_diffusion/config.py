"""The chain config: YAML files merged in order over the schema (:mod:`chain_of_diffusion.schema`),
``key=value`` last, then checked (:mod:`chain_of_diffusion.validation`).

Every check that can fail on user input raises :class:`ConfigError` with one line that names the
key (``train.lr``) and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf import errors as oc_errors

from chain_of_diffusion.errors import ConfigError
from chain_of_diffusion.schema import (  # noqa: F401  (re-exported: the package imports them from here)
    ARCHS,
    ATTENTION,
    CHANNELS,
    FLOW_SAMPLERS,
    GUIDANCE_SCHEDULES,
    HUB_PUSH_SAMPLES,
    METRIC_NAMES,
    MIX_POLICIES,
    MIXED_PRECISION,
    OBJECTIVES,
    ON_ERROR,
    OPTIMIZERS,
    PRDC_NAMES,
    PRETRAINED_SPACES,
    REAL_FRACTION_SCHEDULES,
    SCHEDULERS,
    SELECT_FEATURES,
    SELECT_METHODS,
    T_SAMPLINGS,
    TRAIN_INITS,
    TRAIN_MODES,
    VECTOR_ARCHS,
    VECTOR_SOURCES,
    ChainConfig,
    DataConfig,
    HubConfig,
    MetricsConfig,
    MixConfig,
    ModelConfig,
    SampleConfig,
    SelectConfig,
    TrainConfig,
    VectorConfig,
    has_labels,
)
from chain_of_diffusion.validation import (  # noqa: F401  (re-exported)
    IMAGE_ONLY_METRICS,
    selection_space,
    validate,
    vector_dim,
)


def _one_line_omegaconf_error(err: oc_errors.OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, (oc_errors.ConfigAttributeError, oc_errors.ConfigKeyError)):
        parent, _, leaf = key.rpartition(".")
        node = _schema_node(parent)
        allowed = sorted(node.keys()) if node is not None else []
        hint = difflib.get_close_matches(leaf, allowed, n=1)
        suggestion = f" (did you mean '{(parent + '.' if parent else '') + hint[0]}'?)" if hint else ""
        return ConfigError(
            f"{origin}: unknown config key '{key}'{suggestion}; allowed keys here: {', '.join(allowed)}"
        )
    return ConfigError(f"{origin}: config key '{key}': {msg}")


def _schema_node(dotted: str) -> Optional[DictConfig]:
    node: Any = OmegaConf.structured(ChainConfig)
    for part in [p for p in dotted.split(".") if p]:
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, DictConfig) else None


def _one_line_yaml_error(err: Exception, path: Path) -> str:
    """``file:line:column: not valid YAML: <problem>`` (1-based, as editors count) where the yaml
    error carries its position (``problem_mark``), else the first line of its message."""
    mark = getattr(err, "problem_mark", None)
    problem = " ".join(str(getattr(err, "problem", None) or "").split())
    if mark is None or not problem:
        lines = str(err).strip().splitlines()
        return f"{path}: not valid YAML ({lines[0] if lines else type(err).__name__})"
    context = " ".join(str(getattr(err, "context", None) or "").split())
    context_mark = getattr(err, "context_mark", None)
    if context and context_mark is not None:
        context += f" started at line {context_mark.line + 1}, column {context_mark.column + 1}"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    """The dotted keys of the values a loaded YAML mapping sets (``train.steps``)."""
    if not isinstance(node, dict):
        return [prefix.rstrip(".")] if prefix else []
    return [k for key, value in node.items() for k in _dotted_keys(value, f"{prefix}{key}.")]


def pretrained_candidates(name: str, config_file: Optional[str | Path] = None) -> list[Path]:
    """Where a ``model.pretrained`` path is looked for, in order: as given (absolute, or relative to
    the working directory), then relative to the folder of ``config_file``, the config file that set it."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return [path]
    tried = [Path.cwd() / path]
    if config_file is not None:
        beside = Path(config_file).absolute().parent / path
        if os.path.normpath(beside) != os.path.normpath(tried[0]):
            tried.append(Path(os.path.normpath(beside)))
    return tried


def load_config(config_files: list[str | Path] = (), overrides: list[str] = (),
                *, origins: Optional[dict[str, str]] = None) -> ChainConfig:
    """Merge the schema defaults, each YAML file left to right, then ``key=value`` overrides.

    A relative ``model.pretrained`` that is no folder from the working directory is looked for beside
    the config file that set it (:func:`pretrained_candidates`). ``origins``, where given, is filled
    with dotted key -> the config file that set the key last (keys an override set last are left out).
    """
    origins = {} if origins is None else origins
    merged = OmegaConf.structured(ChainConfig)
    for path in config_files:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:  # yaml errors carry multi-line context
            raise ConfigError(_one_line_yaml_error(err, path)) from None
        try:
            merged = OmegaConf.merge(merged, loaded)
        except oc_errors.OmegaConfBaseException as err:
            raise _one_line_omegaconf_error(err, str(path)) from None
        origins.update(dict.fromkeys(_dotted_keys(OmegaConf.to_container(loaded)), str(path)))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        origins.pop(item.split("=", 1)[0].strip(), None)
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except oc_errors.OmegaConfBaseException as err:
            raise _one_line_omegaconf_error(err, f"override {item!r}") from None
    try:
        cfg = OmegaConf.to_object(merged)
    except oc_errors.OmegaConfBaseException as err:
        raise _one_line_omegaconf_error(err, "config") from None
    validate(cfg)
    # a model.pretrained that is no folder from here but one beside the config file that set it: that
    # folder (a Hub id, or a path found nowhere, stays as typed; preflight.py says where it looked)
    tried = pretrained_candidates(cfg.model.pretrained or "", origins.get("model.pretrained"))
    if cfg.model.pretrained and len(tried) == 2 and not tried[0].exists() and tried[1].exists():
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=str(tried[1])))
    return cfg


def to_yaml(cfg: ChainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: ChainConfig) -> dict:
    return dataclasses.asdict(cfg)


# The keys whose change makes an existing run directory a different run: not output_dir (a moved run is
# the same run), nor hub (where a chain is shared changes none of its results); everything else.
def fingerprint_dict(cfg: ChainConfig) -> dict:
    d = to_dict(cfg)
    d.pop("output_dir")
    d.pop("generations")  # extending a finished chain by more generations is allowed
    d.pop("hub")
    d["train"].pop("process_timeout_s")  # how long to wait for a dead process changes no result
    return d


def diff_keys(a, b, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts (a missing key differs from any value)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]
