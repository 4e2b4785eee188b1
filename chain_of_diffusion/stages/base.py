"""The stage protocol: what every stage of the chain is, and what it is given.

A stage reads the files of earlier stages from the run directory and writes its own into the
temporary folder ``out`` it is given; :mod:`chain_of_diffusion.chain` renames that folder into
place (``gen_XX/<folder>`` or ``<output_dir>/<folder>``) and records it in ``state.json``.
Stages talk to each other only through those files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Protocol

from chain_of_diffusion.config import ChainConfig
from chain_of_diffusion.runs import RunDir

When = Literal["before", "per_generation", "after"]


@dataclass
class StageContext:
    """What every stage is given: the resolved config, the run directory and the accelerator."""

    cfg: ChainConfig
    run: RunDir
    accelerator: Any  # accelerate.Accelerator; devices come from it, never from torch.cuda

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def built_base(self) -> Path:
        """Where the reference stage saved the base model built from ``model.arch`` (no pretrained)."""
        return self.run.reference / "base_model"

    def trained_folder(self, generation: int) -> Path:
        return self.run.stage_path(generation, "model")

    def trained_model(self, generation: int):
        """Generation ``generation``'s trained model on the accelerator's device."""
        from chain_of_diffusion.models.load import load_trained, on_device

        model = load_trained(self.cfg, self.built_base, self.trained_folder(generation))
        return on_device(model, self.cfg, self.accelerator.device)


class Stage(Protocol):
    """One stage of the chain. ``when``: once before generation 0, once per generation, or once
    after the last; ``every_process``: whether every process runs :meth:`run` (the others wait)."""

    name: str  # how state.json and the logs call it
    folder: str  # what it produces: gen_XX/<folder>, or <output_dir>/<folder> when not per generation
    when: When
    every_process: bool

    def run(self, ctx: StageContext, generation: Optional[int], out: Path) -> dict:
        """Write this stage's files into ``out``; return a summary for the log (main process)."""
        ...


class StagePending(Exception):
    """Raised (main process, by a stage that runs there only) when a side stage's work cannot be done now
    and must not stop the chain: a push to an unreachable Hub. Its folder is not made, so it is not done;
    ``state.json`` lists it under ``"pending"`` with this one-line reason; the chain goes on. The engine
    tries it again before the same stage runs for a later generation, and at the next start."""


def mark_pending(state: dict, generation: int, name: str, reason: str) -> None:
    state.setdefault("pending", {}).setdefault(str(generation), {})[name] = reason


def clear_pending(state: dict, generation: int, name: str) -> None:
    pending = state.get("pending", {})
    pending.get(str(generation), {}).pop(name, None)
    for key in [k for k, v in pending.items() if not v]:
        del pending[key]
    if "pending" in state and not pending:
        del state["pending"]


def on_start(stage: Stage, ctx: StageContext) -> Optional[str]:
    """The stage's look at a (re)starting chain (main process, before any stage), where it has one: it may
    refuse the run with a one-line input error, or return one line to show."""
    hook = getattr(stage, "on_start", None)
    return hook(ctx) if hook is not None else None


def after_commit(stage: Stage, ctx: StageContext, generation: Optional[int]) -> None:
    """The stage's clean-up once its folder is in place (main process), where it has one."""
    hook = getattr(stage, "after_commit", None)
    if hook is not None:
        hook(ctx, generation)


def enabled(stage: Stage, cfg: ChainConfig) -> bool:
    """Whether the config asks for the stage at all (a stage without ``enabled`` always runs)."""
    hook = getattr(stage, "enabled", None)
    return hook is None or bool(hook(cfg))


def check(stage: Stage, ctx: StageContext) -> None:
    """The stage's check of its finished output, on every process, at every (re)start, where it has one."""
    hook = getattr(stage, "check", None)
    if hook is not None:
        hook(ctx)
