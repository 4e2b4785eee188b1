"""Pretrained bases made here: a small text-to-image model pretrained as Stable Diffusion was, for
the Chain of Diffusion to LoRA-finetune where no real pretrained pipeline can be downloaded.

``model.pretrained: base:digits`` names the preset :data:`BASES` ``["digits"]``. Its folder is
``<cache>/bases/<hash>/`` (the cache: ``$CHAIN_OF_DIFFUSION_CACHE``, else
``$XDG_CACHE_HOME/chain-of-diffusion``, else ``~/.cache/chain-of-diffusion``), the hash taken over
the spec and :data:`FORMAT`, so a changed spec is a new base and an unchanged one is built once.
The folder holds ``unet/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/`` in the diffusers
layout (pixel space: no ``vae/``), loaded through ``model.pretrained`` as any pipeline folder,
plus ``base.json`` (spec, format, how it was trained).

How it is pretrained, as SD was: on a broader captioned set than the chain finetunes on (digits
that the chain's ``digits_bold`` source never holds), with condition drop 0.1 so that classifier-
free guidance has an unconditional model to push away from, and with the CLIP text encoder trained
jointly: SD freezes a CLIP encoder that already knows language, this one starts random (left frozen it
measured as good here: docs/results.md "The base and the LoRA's targets").

Building runs training in ``<hash>.partial/`` (checkpoints every 100 steps: a killed build resumes)
and renames the finished model into place, so no half-written base is ever loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from chain_of_diffusion.errors import ConfigError, ModelLoadError

PREFIX = "base:"
# bumped when what a spec builds changes: older folders are then refused, not loaded (2: trained with
# BUILD_THREADS whatever the launcher set)
FORMAT = 2
INFO = "base.json"
# accelerate launch's variables: a build started from a launched chain must be a process of its own
_DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                    "GROUP_RANK", "ROLE_RANK", "ACCELERATE_USE_CPU")


@dataclass(frozen=True)
class BaseSpec:
    """What a base is trained from and how; every field goes into its cache key."""

    source: str = "digits"  # the digits the chain's source (digits_bold) never holds: 1,437 images
    resolution: int = 8  # pixels a side (scikit-learn's digits are 8x8)
    arch: str = "tiny"  # a built UNet layout (models/layouts.py)
    text_hidden_size: int = 64
    train_text_encoder: bool = True  # False: the random CLIP text encoder stays frozen
    steps: int = 950
    batch_size: int = 64
    lr: float = 2.0e-3
    lr_warmup_steps: int = 50
    ema_decay: float = 0.995  # measured: raised caption accuracy at CFG 3 from 0.78 to 0.87
    condition_drop: float = 0.1
    seed: int = 0


BASES = {"digits": BaseSpec()}


def cache_root() -> Path:
    """Where built bases live (see the module docstring)."""
    if os.environ.get("CHAIN_OF_DIFFUSION_CACHE"):
        return Path(os.environ["CHAIN_OF_DIFFUSION_CACHE"]).expanduser() / "bases"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "chain-of-diffusion" / "bases"


def is_base_name(name: Optional[str]) -> bool:
    return bool(name) and str(name).startswith(PREFIX)


def spec_with(spec: BaseSpec, overrides: list[str]) -> BaseSpec:
    """``spec`` with ``key=value`` overrides (values parsed as YAML); a one-line ConfigError for an
    unknown key or a value of the wrong type."""
    import yaml

    fields = {f.name: f for f in dataclasses.fields(BaseSpec)}
    changes = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"base override {item!r}: expected key=value with key one of {', '.join(fields)}")
        value = yaml.safe_load(text)
        kind = type(getattr(spec, key))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"base override {item!r}: {key} takes a {kind.__name__}")
        changes[key] = value
    return dataclasses.replace(spec, **changes)


def spec_of(name: str) -> BaseSpec:
    """The spec of ``base:<preset>`` (or of a bare preset name)."""
    preset = name[len(PREFIX):] if is_base_name(name) else name
    if preset not in BASES:
        raise ConfigError(f"config key 'model.pretrained': unknown base {name!r}; known: "
                          f"{', '.join(PREFIX + k for k in BASES)}")
    return BASES[preset]


def spec_key(spec: BaseSpec) -> str:
    text = json.dumps({"format": FORMAT, **dataclasses.asdict(spec)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def base_folder(spec: BaseSpec) -> Path:
    return cache_root() / spec_key(spec)


def check_base_folder(folder: Path) -> None:
    """A one-line ModelLoadError where ``folder`` is a base made with another format version."""
    info_path = Path(folder) / INFO
    if not info_path.is_file():
        return  # not a base made here: a pipeline like any other
    try:
        made = json.loads(info_path.read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        made = None
    if made != FORMAT:
        raise ModelLoadError(
            f"model.pretrained: {folder} is a base made by format version {made} of scripts/pretrain_base.py; "
            f"this version makes format {FORMAT}: rebuild it (python scripts/pretrain_base.py) and point at the new folder"
        )


# ---- building ---------------------------------------------------------------------------------
def pretraining_set(spec: BaseSpec):
    """(images (N, 3, H, W) in [-1, 1], captions, labels) the base trains on."""
    from chain_of_diffusion.config import DataConfig
    from chain_of_diffusion.data.imageset import pil_to_tensor
    from chain_of_diffusion.data.sources.digits import chain_part, load_digits_where

    if spec.source != "digits":
        raise ConfigError(f"base source {spec.source!r}: only 'digits' is implemented")
    data = load_digits_where(DataConfig(source="digits", resolution=spec.resolution), keep=lambda i: not chain_part(i))
    images = pil_to_tensor([e.image for e in data.examples])
    return images, [e.text for e in data.examples], [e.label for e in data.examples]


# CPU threads a base is trained with, whatever the launcher set (accelerate launch gives each process 1):
# float sums depend on the thread count, and a base trained another way is another draw of the base, with
# other chain results (docs/results.md)
BUILD_THREADS = 2


def pretrain(spec: BaseSpec, folder: Path) -> dict:
    """Train the base of ``spec`` and move it to ``folder`` (which must not exist); resumes a build
    killed earlier from ``<folder>.partial``. Call it in a process of its own (it makes an
    Accelerator). Returns what was written to ``base.json``."""
    import shutil

    import torch
    from accelerate import Accelerator

    from chain_of_diffusion.config import ModelConfig, TrainConfig
    from chain_of_diffusion.models.build import MAX_TOKENS, build_model, encode_captions, save_model
    from chain_of_diffusion.models.denoisers import unet_denoiser
    from chain_of_diffusion.processes import make_process
    from chain_of_diffusion.runs import atomic_write_json
    from chain_of_diffusion.seeding import derive_seed
    from chain_of_diffusion.train import TrainData, train_denoiser

    torch.set_num_threads(BUILD_THREADS)
    started = time.time()
    partial = folder.with_name(folder.name + ".partial")
    images, captions, _ = pretraining_set(spec)
    model = build_model(ModelConfig(arch=spec.arch, text_hidden_size=spec.text_hidden_size), spec.resolution,
                        seed=derive_seed(spec.seed, "base-init"))
    model.unet.requires_grad_(True)
    unique = sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    if spec.train_text_encoder:
        model.text_encoder.requires_grad_(True)
        ids = model.tokenizer(unique + [""], padding="max_length", max_length=MAX_TOKENS, truncation=True,
                              return_tensors="pt").input_ids
        text = {"caption_ids": ids[:-1], "empty_ids": ids[-1:]}
    else:
        emb = encode_captions(model, unique + [""])
        text = {"caption_embeddings": emb[:-1], "empty_embedding": emb[-1:]}
    data = TrainData(x0=images, caption_index=torch.tensor([index[c] for c in captions]), **text)
    tcfg = TrainConfig(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, lr_warmup_steps=spec.lr_warmup_steps,
                       ema_decay=spec.ema_decay, condition_drop=spec.condition_drop, checkpoint_every=100, log_every=50)
    process = make_process("eps", model.noise_scheduler)
    accelerator = Accelerator()
    result = train_denoiser(
        model.unet, process, data, tcfg, seed=derive_seed(spec.seed, "base-train"), accelerator=accelerator,
        checkpoint_dir=partial / "checkpoints", desc="pretrain base",
        text_encoder=model.text_encoder if spec.train_text_encoder else None,
        adapter=lambda unet: unet_denoiser(unet, process),
    )
    model.unet.requires_grad_(False)
    model.text_encoder.requires_grad_(False)
    staged = partial / "model"
    shutil.rmtree(staged, ignore_errors=True)
    save_model(model, staged)
    info = {"format": FORMAT, "spec": dataclasses.asdict(spec), "key": spec_key(spec),
            "num_images": int(images.shape[0]), "final_loss": result.final_loss, "threads": BUILD_THREADS,
            "train_seconds": round(result.seconds, 1), "build_seconds": round(time.time() - started, 1)}
    atomic_write_json(staged / INFO, info, indent=1, sort_keys=False)
    os.replace(staged, folder)
    shutil.rmtree(partial, ignore_errors=True)
    return info


def ensure_base(spec: BaseSpec, say=print) -> Path:
    """The folder of the base of ``spec``, built first where it is missing. Safe to call from every
    process of a launch: one builds (in a process of its own, outside the launch's process group)
    while the others wait on a file lock, then all find it."""
    import filelock

    folder = base_folder(spec)
    if (folder / INFO).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(folder) + ".lock"):
        if (folder / INFO).is_file():
            return folder
        say(f"building the pretrained base {folder} (once; later runs reuse it)")
        env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_ENV}
        script = [sys.executable, "-m", "chain_of_diffusion.bases", *spec_overrides(spec)]
        proc = subprocess.run(script, env=env)
        if proc.returncode != 0 or not (folder / INFO).is_file():
            raise ModelLoadError(f"building the pretrained base {folder} failed (exit {proc.returncode}); "
                                 "run python scripts/pretrain_base.py to see why")
    return folder


def spec_overrides(spec: BaseSpec) -> list[str]:
    """``key=value`` for every field where ``spec`` differs from the defaults."""
    default = BaseSpec()
    return [f"{f.name}={json.dumps(getattr(spec, f.name))}" for f in dataclasses.fields(spec)
            if getattr(spec, f.name) != getattr(default, f.name)]


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m chain_of_diffusion.bases [key=value ...]``: build one base into its cache folder
    (what :func:`ensure_base` runs); scripts/pretrain_base.py is the command for people."""
    spec = spec_with(BaseSpec(), list(sys.argv[1:] if argv is None else argv))
    folder = base_folder(spec)
    if not (folder / INFO).is_file():
        pretrain(spec, folder)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
