"""The stages of the chain, in the order they run: one file each, one line each in :data:`REGISTRY`.

A stage is an object with ``name``, ``folder``, ``when`` ("before" generation 0, "per_generation",
"after" the last), ``every_process`` and ``run(ctx, generation, out) -> dict``, and optionally
``enabled(cfg)`` (see :class:`~chain_of_diffusion.stages.base.Stage`). :mod:`chain_of_diffusion.chain` runs each
registered stage once, in this order, and skips those whose folder already exists. Adding a
stage is one new file here and one line below.
"""

from __future__ import annotations

from chain_of_diffusion.stages.base import Stage, StageContext
from chain_of_diffusion.stages.evaluate import EvaluateStage
from chain_of_diffusion.stages.few_steps import FewStepsStage
from chain_of_diffusion.stages.generate import GenerateStage
from chain_of_diffusion.stages.mix import MixStage
from chain_of_diffusion.stages.push import PushStage
from chain_of_diffusion.stages.real import RealStage
from chain_of_diffusion.stages.reference import ReferenceStage
from chain_of_diffusion.stages.select import SelectStage
from chain_of_diffusion.stages.train import TrainStage

REGISTRY: tuple[Stage, ...] = (
    RealStage(),
    ReferenceStage(),
    MixStage(),
    TrainStage(),
    GenerateStage(),
    SelectStage(),
    FewStepsStage(),
    EvaluateStage(),
    PushStage(),  # hub.repo_id only: the generation on the Hub (main process; never stops the chain)
)


def stages_when(when: str) -> list[Stage]:
    return [s for s in REGISTRY if s.when == when]


__all__ = ["REGISTRY", "Stage", "StageContext", "stages_when"]
