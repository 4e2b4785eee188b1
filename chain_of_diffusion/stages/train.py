"""train: every process trains generation g's model on its training set; the main process saves it.

The files-to-tensors glue of training lives here: the training set is encoded once (latents,
both flips where asked, caption embeddings), through the run's content-hash cache where a VAE
makes that worth it; validation images are rendered during training where asked.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import torch
from accelerate.utils import gather_object

from chain_of_diffusion.checkpoints import is_sharded
from chain_of_diffusion.data.imageset import image_path, load_images, read_metadata
from chain_of_diffusion.generate import render
from chain_of_diffusion.metrics.report import make_grid_image
from chain_of_diffusion.metrics.tracking import log_image
from chain_of_diffusion.models.build import MAX_TOKENS, encode_captions, encode_images, save_model
from chain_of_diffusion.models.cache import EncodingCache, file_key, text_key
from chain_of_diffusion.models.denoisers import unet_denoiser
from chain_of_diffusion.models.load import process_for, training_model
from chain_of_diffusion.models.lora import lora_layers, save_lora
from chain_of_diffusion.reflow import REFLOW_POLICIES, give_pairs
from chain_of_diffusion.requests import grid_scale
from chain_of_diffusion.runs import atomic_write_json
from chain_of_diffusion.seeding import derive_seed
from chain_of_diffusion.stages.base import StageContext
from chain_of_diffusion.train import TrainData, train_denoiser


class TrainStage:
    name, folder = "train", "model"
    when = "per_generation"
    every_process = True

    def run(self, ctx: StageContext, generation: Optional[int], out: Path) -> dict:
        cfg, run, accelerator = ctx.cfg, ctx.run, ctx.accelerator
        train_dir = run.stage_path(generation, "train_set")
        records = read_metadata(train_dir)
        previous = ctx.trained_folder(generation - 1) if generation > 0 else None
        model = training_model(cfg, ctx.built_base, generation, previous, accelerator.device)
        cache_stats: dict = {}
        data = training_data(ctx, train_dir, records, model, cache_stats)
        process = process_for(cfg, model)
        pairs = {"given_noise": False}
        if cfg.mix.policy in REFLOW_POLICIES and generation > 0:
            pairs = give_pairs(ctx, generation, records, data, model, process)
        result = train_denoiser(
            model.unet, process, data, cfg.train, adapter=lambda unet: unet_denoiser(unet, process),
            seed=derive_seed(cfg.seed, "train", generation), accelerator=accelerator,
            checkpoint_dir=self._checkpoints(ctx, generation),
            desc=f"gen {generation} train", on_step=validation_hook(ctx, generation, model, process),
            text_encoder=model.text_encoder if cfg.train.lora_text_encoder else None,
        )
        summary = {"steps": result.steps, "final_loss": result.final_loss, "losses": result.losses,
                   **pairs,
                   "resumed_from_step": result.resumed_from_step, "encoding_cache": cache_stats}
        layers = None
        if cfg.train.mode == "lora":  # every process: gathering an FSDP-sharded adapter is a collective
            layers = lora_layers(model.unet, model.text_encoder if cfg.train.lora_text_encoder else None)
        if ctx.is_main:
            if layers is not None:
                save_lora(model.unet, out, cfg.train, layers=layers)
            else:
                save_model(model, out)
            atomic_write_json(out / "train_log.json", summary, indent=1, sort_keys=False)
        accelerator.wait_for_everyone()
        return summary

    def after_commit(self, ctx: StageContext, generation: Optional[int]) -> None:
        shutil.rmtree(self._checkpoints(ctx, generation), ignore_errors=True)

    @staticmethod
    def _checkpoints(ctx: StageContext, generation: int) -> Path:
        return ctx.run.gen(generation) / ".train_checkpoints"


def training_data(ctx: StageContext, train_dir: Path, records: list[dict], model, cache_stats: dict) -> TrainData:
    """Encode the training set once: latents (both flips where asked) and caption embeddings.

    With a VAE and ``train.cache_latents`` the encodings go through the run's content-hash cache,
    filled by the main process while the others wait, so no process repeats the VAE's work.
    ``cache_stats`` receives how many encodings were computed and how many were found cached.
    """
    cfg, accelerator = ctx.cfg, ctx.accelerator
    captions = sorted({r["text"] for r in records})
    index = {c: i for i, c in enumerate(captions)}
    flips = [False, True] if cfg.data.random_flip else [False]

    def encode_pixels(positions: list[int], flip: bool) -> torch.Tensor:
        images = load_images(train_dir, [records[i] for i in positions])
        return encode_images(model, images.flip(-1) if flip else images)

    if cfg.train.lora_text_encoder:  # the text encoder trains: captions go in as token ids
        ids = model.tokenizer(captions + [""], padding="max_length", max_length=MAX_TOKENS, truncation=True,
                              return_tensors="pt").input_ids
        text = {"caption_ids": ids[:-1], "empty_ids": ids[-1:]}
    if cfg.train.cache_latents and model.vae is not None:
        cache = EncodingCache(ctx.run.root / "cache")
        image_keys = {flip: [file_key(image_path(train_dir, r), "flip" if flip else "") for r in records]
                      for flip in flips}
        text_keys = [text_key(c) for c in captions + [""]]
        if accelerator.is_main_process:
            for flip in flips:
                unique = len(set(image_keys[flip]))
                encoded = cache.fill(image_keys[flip], lambda pos, flip=flip: encode_pixels(pos, flip))
                cache_stats["images_encoded"] = cache_stats.get("images_encoded", 0) + encoded
                cache_stats["images_reused"] = cache_stats.get("images_reused", 0) + unique - encoded
            if not cfg.train.lora_text_encoder:
                encoded = cache.fill(text_keys, lambda pos: encode_captions(model, [(captions + [""])[i] for i in pos]))
                cache_stats.update(captions_encoded=encoded, captions_reused=len(text_keys) - encoded)
        accelerator.wait_for_everyone()
        x0 = {flip: cache.load(image_keys[flip]) for flip in flips}
        if not cfg.train.lora_text_encoder:
            embeddings = cache.load(text_keys)
    else:
        everything = list(range(len(records)))
        x0 = {flip: encode_pixels(everything, flip) for flip in flips}
        if not cfg.train.lora_text_encoder:
            embeddings = encode_captions(model, captions + [""])
    if not cfg.train.lora_text_encoder:
        text = {"caption_embeddings": embeddings[:-1].float(), "empty_embedding": embeddings[-1:].float()}
    return TrainData(
        x0=x0[False].float(),
        caption_index=torch.tensor([index[r["text"]] for r in records]),
        x0_flipped=x0[True].float() if cfg.data.random_flip else None,
        **text,
    )


def validation_hook(ctx: StageContext, generation: int, model, process):
    """``on_step`` for the trainer: every ``train.validation_every`` steps, render the validation
    prompts (each process its share, with fixed seeds) into ``gen_XX/validation/step_XXXXXX.png``."""
    cfg, accelerator = ctx.cfg, ctx.accelerator
    every = cfg.train.validation_every
    if not every:
        return None
    requests = [{"index": i, "text": text, "seed": derive_seed(cfg.seed, "validation", i)}
                for i, text in enumerate(cfg.train.validation_prompts)]
    folder = ctx.run.gen(generation) / "validation"

    def on_step(step: int, unet) -> None:
        if step % every:
            return
        training = [net for net in (unet, model.text_encoder) if net.training]
        for net in training:
            net.eval()
        # a sharded (FSDP) UNet gathers its weights in every forward, a collective: every process renders
        # every prompt in step, and the main process's images are the grid
        whole_set = is_sharded(unet.parameters())
        with accelerator.split_between_processes(requests) as mine, accelerator.autocast():
            mine = requests if whole_set else list(mine)
            images = render(model, mine, cfg.sample, process=process) if mine else torch.empty(0)
            shard = [(r["index"], images[k].float().numpy()) for k, r in enumerate(mine)]
            if whole_set and not accelerator.is_main_process:
                shard = []
        for net in training:
            net.train()
        gathered = sorted(gather_object(shard), key=lambda item: item[0])
        if accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            grid = torch.stack([torch.from_numpy(image) for _, image in gathered])
            path = folder / f"step_{step:06d}.png"
            make_grid_image(grid, nrow=len(gathered), scale=grid_scale(cfg)).save(path)
            # beside the metrics, as diffusers' scripts log validation images
            log_image(cfg.metrics.tracker, cfg.output_dir, f"gen_{generation:02d}_validation", "validation", path, step)

    return on_step
