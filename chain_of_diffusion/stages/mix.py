"""mix: generation g's training set (records pointing at existing images) from real + selected pools."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from chain_of_diffusion.data.imageset import write_metadata
from chain_of_diffusion.mix import build_training_set
from chain_of_diffusion.runs import atomic_write_json
from chain_of_diffusion.stages.base import StageContext


class MixStage:
    name, folder = "mix", "train_set"
    when = "per_generation"
    every_process = False

    def run(self, ctx: StageContext, generation: Optional[int], out: Path) -> dict:
        records, stats = build_training_set(ctx.cfg, ctx.run, generation, out)
        write_metadata(out, records)
        atomic_write_json(out / "stats.json", stats)
        return stats
