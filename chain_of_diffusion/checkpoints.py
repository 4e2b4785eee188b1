"""Training checkpoints through accelerate: saved atomically, resumed exactly.

``accelerate.save_state`` writes the model, optimizer and RNG states; the trainer's own state (step,
loss log, LR schedule, EMA) goes beside it in ``trainer_state.pt``. A partial model (a LoRA) saves
only its trainable parameters, not the gigabytes of the frozen base.

Under FSDP (parameters sharded as DTensors) accelerate's saving would write the whole base, since its
PEFT detection knows only ``PeftModel``: the chain saves the same two files itself there, the trainable
parameters gathered whole and the optimizer state as one full state dict (torch.distributed.checkpoint),
so a checkpoint holds the same weights whatever the number of processes.
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
OPTIMIZER_STATE = "optimizer_full.pt"  # a sharded run's optimizer state, gathered whole


def is_sharded(params) -> bool:
    """Whether FSDP sharded these parameters (FSDP2 makes every parameter a DTensor)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in params)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full value of a parameter or gradient, gathered from every process where FSDP sharded it
    (a collective: every process calls it, in the same order)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _set_whole(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a full value into a parameter, into this process's shard where FSDP sharded it."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        value = distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements)
    param.copy_(value)


def save_checkpoint(accelerator: Accelerator, checkpoint_dir: Path, trainer_state: dict,
                    sharded: Optional[ShardedTraining] = None) -> None:
    """Save to ``latest`` through a temp folder, so a kill mid-save keeps the previous one.
    ``sharded``: what an FSDP run saves itself (see the module's docstring)."""
    tmp, latest, old = checkpoint_dir / "tmp", checkpoint_dir / "latest", checkpoint_dir / "old"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    if sharded is None:
        accelerator.save_state(str(tmp))
    else:
        sharded.save(accelerator, tmp)
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


def load_checkpoint(accelerator: Accelerator, folder: Path, sharded: Optional[ShardedTraining] = None) -> dict:
    """Restore the model and optimizer saved in ``folder``; return the trainer's own state."""
    if sharded is None:
        accelerator.load_state(str(folder))
    else:
        sharded.load(folder)
    return load_trainer_state(folder)


class ShardedTraining:
    """The checkpoint of an FSDP run: its trainable parameters (``modules``: name -> network) whole, and the
    optimizer's state as a full state dict keyed by parameter names (both the same for any process count)."""

    def __init__(self, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer):
        self.modules = modules
        self.names = trainable_names(modules)
        self.network = torch.nn.ModuleDict(modules)  # one module over the networks, for the optimizer's names
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer inside accelerate's

    def save(self, accelerator: Accelerator, folder: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        weights = trainable_weights(self.modules, self.names)
        optimizer = get_optimizer_state_dict(self.network, self.optimizer,
                                             options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            save_file(weights, str(folder / TRAINABLE_WEIGHTS))
            torch.save(optimizer, folder / OPTIMIZER_STATE)

    def load(self, folder: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        load_trainable_weights(self.modules, self.names, folder)
        set_optimizer_state_dict(self.network, self.optimizer, torch.load(folder / OPTIMIZER_STATE, weights_only=False),
                                 options=StateDictOptions(full_state_dict=True))


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


def trainable_names(modules: dict[str, torch.nn.Module]) -> list[str]:
    return [n for n, p in named_parameters(modules).items() if p.requires_grad]


def trainable_weights(modules: dict[str, torch.nn.Module], names: list[str]) -> dict[str, torch.Tensor]:
    """The parameters ``names``, whole, on the CPU in fp32 (gathered where FSDP sharded them: a collective)."""
    state = named_parameters(modules)
    return {n: whole(state[n].detach()).float().cpu().contiguous() for n in names}


def load_trainable_weights(modules: dict[str, torch.nn.Module], names: list[str], folder: str | Path) -> None:
    """Copy a checkpoint's trainable weights into the parameters ``names`` (into each process's shard
    where FSDP sharded them)."""
    loaded = load_file(os.path.join(folder, TRAINABLE_WEIGHTS))
    if set(loaded) != set(names):
        raise TrainingError(f"{folder}: checkpoint does not match the trainable parameters")
    state = named_parameters(modules)
    with torch.no_grad():
        for n in names:
            _set_whole(state[n], loaded[n])


def trainable_only_checkpoints(accelerator: Accelerator, modules: dict[str, torch.nn.Module]):
    """Save and load only the trainable parameters (a LoRA: megabytes, not the gigabytes of the
    frozen base) in accelerate checkpoints. Returns the hook handles."""
    names = trainable_names(modules)

    def save_hook(models, weights, output_dir):
        save_file(trainable_weights(modules, names), os.path.join(output_dir, TRAINABLE_WEIGHTS))
        weights.clear()  # accelerate writes nothing more for the models

    def load_hook(models, input_dir):
        models.clear()  # accelerate must not load a full state dict
        load_trainable_weights(modules, names, input_dir)

    return [accelerator.register_save_state_pre_hook(save_hook),
            accelerator.register_load_state_pre_hook(load_hook)]
