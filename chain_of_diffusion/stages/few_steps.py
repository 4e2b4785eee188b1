"""few_steps: a flow generation's samples again at 1, 2, ... Euler steps, and their metrics.

The point of Reflow is a flow straight enough to sample in a step or two, and RA Reflow's claim is
that quality survives it (Zhu et al. 2024). For each count k in ``metrics.few_steps`` every process
re-renders its share of the evaluated samples (same captions and seeds) with k Euler steps into
``gen_XX/few_steps/steps_K/``; the main process computes ``metrics.names`` on them, written with the
suffix ``_Kstep`` (``fd_classifier_1step``) into ``few_steps/metrics.json``, which the evaluate stage
adds to the generation's row.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from chain_of_diffusion.data.imageset import write_metadata
from chain_of_diffusion.generate import generate_image_set
from chain_of_diffusion.metrics import evaluation
from chain_of_diffusion.models.load import process_for
from chain_of_diffusion.runs import atomic_write_json
from chain_of_diffusion.stages.base import StageContext

METRICS_FILE = "metrics.json"


def metric_key(name: str, steps: int) -> str:
    return f"{name}_{steps}step"


class FewStepsStage:
    name, folder = "few_steps", "few_steps"
    when = "per_generation"
    every_process = True

    @staticmethod
    def enabled(cfg) -> bool:
        return bool(cfg.metrics.few_steps)

    def run(self, ctx: StageContext, generation: Optional[int], out: Path) -> dict:
        from chain_of_diffusion.stages.evaluate import evaluated_sample_records, generation_folders

        cfg, run, accelerator = ctx.cfg, ctx.run, ctx.accelerator
        model = ctx.trained_model(generation)
        requests = [{k: v for k, v in r.items() if k != "file_name"}
                    for r in evaluated_sample_records(cfg, run, generation)]
        metrics: dict = {}
        for steps in cfg.metrics.few_steps:
            few = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, steps=steps, scheduler="euler"))
            folder = out / f"steps_{steps}"
            folder.mkdir(exist_ok=True)
            with accelerator.autocast():
                records = generate_image_set(model, requests, few.sample, folder, accelerator,
                                             desc=f"gen {generation} {steps}-step", process=process_for(few, model))
            if ctx.is_main:
                write_metadata(folder, records)
                folders = dataclasses.replace(generation_folders(run, generation), samples=folder, features=folder)
                # entropy is the training set's, and *_reference the held-out images': not the samples'
                names = [n for n in cfg.metrics.names if n != "entropy"]
                values = evaluation.evaluate_generation(cfg, folders, records, names, device=accelerator.device)
                metrics.update({metric_key(k, steps): v for k, v in values.items() if not k.endswith("_reference")})
        if ctx.is_main:
            atomic_write_json(out / METRICS_FILE, metrics)
        accelerator.wait_for_everyone()
        return metrics
