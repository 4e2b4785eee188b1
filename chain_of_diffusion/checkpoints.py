"""Training checkpoints through accelerate: saved atomically, resumed exactly.

``accelerate.save_state`` writes the model, optimizer and RNG states; the trainer's own state (step,
loss log, LR schedule, EMA) goes beside it in ``trainer_state.pt``. A partial model (a LoRA) saves
only its trainable parameters, not the gigabytes of the frozen base.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from chain_of_diffusion.errors import TrainingError
from chain_of_diffusion.runs import usual_permissions

TRAINABLE_WEIGHTS = "trainable.safetensors"  # what a partial (LoRA) checkpoint holds of the model


TRAINER_STATE = "trainer_state.pt"  # progress, LR schedule and EMA, beside accelerate's own files


def save_checkpoint(accelerator: Accelerator, checkpoint_dir: Path, trainer_state: dict) -> None:
    """Save to ``latest`` through a temp folder, so a kill mid-save keeps the previous one."""
    tmp, latest, old = checkpoint_dir / "tmp", checkpoint_dir / "latest", checkpoint_dir / "old"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        torch.save(trainer_state, tmp / TRAINER_STATE)
        usual_permissions(tmp)  # safetensors writes 0600: a checkpoint the user's group could not read
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if latest.exists():
            os.replace(latest, old)
        os.replace(tmp, latest)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load_trainer_state(folder: Path) -> dict:
    if (folder / TRAINER_STATE).is_file():
        return torch.load(folder / TRAINER_STATE, weights_only=False)
    # checkpoints written before trainer_state.pt: accelerate's custom objects, in the order they
    # were registered (progress, LR scheduler, EMA)
    names = ("progress", "lr_scheduler", "ema")
    files = [folder / f"custom_checkpoint_{i}.pkl" for i in range(len(names))]
    return {name: torch.load(f, weights_only=False) for name, f in zip(names, files) if f.is_file()}


def latest_checkpoint(checkpoint_dir: Path) -> Optional[Path]:
    for name in ("latest", "old"):  # "old" survives a kill between the two renames
        if (checkpoint_dir / name).is_dir():
            return checkpoint_dir / name
    return None


def named_parameters(modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    return {f"{prefix}.{n}": p for prefix, m in modules.items() for n, p in m.named_parameters()}


def trainable_only_checkpoints(accelerator: Accelerator, modules: dict[str, torch.nn.Module]):
    """Save and load only the trainable parameters (a LoRA: megabytes, not the gigabytes of the
    frozen base) in accelerate checkpoints. Returns the hook handles."""
    names = [n for n, p in named_parameters(modules).items() if p.requires_grad]

    def save_hook(models, weights, output_dir):
        state = named_parameters(modules)
        save_file({n: state[n].detach().float().cpu().contiguous() for n in names},
                  os.path.join(output_dir, TRAINABLE_WEIGHTS))
        weights.clear()  # accelerate writes nothing more for the models

    def load_hook(models, input_dir):
        models.clear()  # accelerate must not load a full state dict
        loaded = load_file(os.path.join(input_dir, TRAINABLE_WEIGHTS))
        state = named_parameters(modules)
        if set(loaded) != set(names):
            raise TrainingError(f"{input_dir}: checkpoint does not match the trainable parameters")
        with torch.no_grad():
            for n in names:
                state[n].copy_(loaded[n])

    return [accelerator.register_save_state_pre_hook(save_hook),
            accelerator.register_load_state_pre_hook(load_hook)]
