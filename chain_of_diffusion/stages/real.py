"""real: read the data source once and write the real splits (real/{heldout,train,pool})."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from chain_of_diffusion.data.real import prepare_real
from chain_of_diffusion.mix import check_fresh_pool
from chain_of_diffusion.stages.base import StageContext


class RealStage:
    name = folder = "real"
    when = "before"
    every_process = False

    def run(self, ctx: StageContext, generation: Optional[int], out: Path) -> dict:
        return prepare_real(ctx.cfg, out)

    def check(self, ctx: StageContext) -> None:
        # every process, before any training: all stop alike when the fresh pool is too small
        check_fresh_pool(ctx.cfg, ctx.run)
