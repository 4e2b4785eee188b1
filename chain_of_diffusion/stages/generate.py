"""generate: every process renders its share of generation g's requests into an image set."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from chain_of_diffusion.data.imageset import load_images, read_metadata, write_metadata
from chain_of_diffusion.generate import generate_image_set
from chain_of_diffusion.models.build import encode_images
from chain_of_diffusion.models.load import process_for
from chain_of_diffusion.requests import sample_requests
from chain_of_diffusion.stages.base import StageContext


class GenerateStage:
    name, folder = "generate", "samples"
    when = "per_generation"
    every_process = True

    def run(self, ctx: StageContext, generation: Optional[int], out: Path) -> dict:
        model = ctx.trained_model(generation)
        requests, starts = sample_requests(ctx.cfg, ctx.run, generation), None
        if ctx.cfg.sample.start == "train_set":  # the DAE chain of the theorem: x <- D(x + sigma eps) from its data
            train_dir = ctx.run.stage_path(generation, "train_set")
            records = read_metadata(train_dir)
            starts = encode_images(model, load_images(train_dir, records))
            requests = [{**r, "start_row": r["index"] % len(records)} for r in requests]
        with ctx.accelerator.autocast():  # train.mixed_precision also sets the sampling precision
            records = generate_image_set(
                model, requests, ctx.cfg.sample, out, ctx.accelerator,
                desc=f"gen {generation} generate", process=process_for(ctx.cfg, model), starts=starts,
            )
        if ctx.is_main:
            write_metadata(out, records)
        ctx.accelerator.wait_for_everyone()
        return {"num_images": len(records)}
