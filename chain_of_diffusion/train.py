"""The one trainer: a UNet denoiser on a fixed set of (image, caption) pairs, through accelerate.

It does not know it is inside a chain: it takes tensors, a :class:`TrainConfig`, a seed and a
checkpoint folder. Two properties the chain relies on:

- **Stateless randomness.** The batch order, noise, timesteps and condition-drop mask of step
  ``s`` are drawn from generators seeded by ``(seed, s)``, so a resumed run draws exactly what an
  uninterrupted one would, and the randomness of a sample does not depend on the process count.
- **Process-count invariance.** The global batch is cut into micro-batches of a fixed size; with
  P processes each takes a contiguous run of them. One process accumulating micro-batches 0 and 1
  and two processes with one each and DDP averaging produce the same bits (power-of-two scaling
  is exact), so a chain on 2 CPU processes reproduces the 1-process chain at equal thread counts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file, save_file

from chain_of_diffusion.config import TrainConfig
from chain_of_diffusion.errors import TrainingError
from chain_of_diffusion.objectives import OBJECTIVES, min_snr_weights, mse_loss
from chain_of_diffusion.seeding import generator

log = logging.getLogger(__name__)

TRAINABLE_WEIGHTS = "trainable.safetensors"  # what a partial (LoRA) checkpoint holds of the model



@dataclass
class TrainResult:
    steps: int
    final_loss: float
    losses: list[dict] = field(default_factory=list)  # {"step": s, "loss": mean over the log window}
    seconds: float = 0.0
    resumed_from_step: int = 0


@dataclass
class TrainData:
    """What one generation trains on, already in the model's space.

    x0: (N, C, H, W) pixels in [-1, 1] or VAE latents; caption_index: (N,) rows of
    ``caption_embeddings`` (U, L, D); empty_embedding: (1, L, D) the embedding of "";
    x0_flipped: (N, C, H, W) the encodings of the mirrored images, where ``data.random_flip``
    asks for flips (each sample of each step is flipped with probability 1/2). Where the text
    encoder trains too (its own LoRA), the captions are token ids instead of embeddings:
    caption_ids (U, L) and empty_ids (1, L), encoded anew every step.
    """

    x0: torch.Tensor
    caption_index: torch.Tensor
    caption_embeddings: Optional[torch.Tensor] = None
    empty_embedding: Optional[torch.Tensor] = None
    x0_flipped: Optional[torch.Tensor] = None
    caption_ids: Optional[torch.Tensor] = None
    empty_ids: Optional[torch.Tensor] = None


def micro_batch_layout(batch_size: int, micro_batch_size: Optional[int], num_processes: int) -> tuple[int, int]:
    """(micro batch size, micro batches per process per step) for a global batch."""
    micro = micro_batch_size or batch_size // num_processes
    if micro < 1 or batch_size % (micro * num_processes) != 0:
        raise TrainingError(
            f"train.batch_size={batch_size} must be a multiple of train.micro_batch_size={micro} "
            f"times the {num_processes} processes"
        )
    return micro, batch_size // (micro * num_processes)


def batch_indices(step: int, batch_size: int, num_examples: int, seed: int) -> torch.Tensor:
    """Example indices of optimizer step ``step``: epochs of seeded permutations, read in order."""
    start = step * batch_size
    positions = torch.arange(start, start + batch_size)
    epochs, offsets = positions // num_examples, positions % num_examples
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(num_examples, generator=generator(seed, "order", epoch))
        mask = epochs == epoch
        out[mask] = perm[offsets[mask]]
    return out


@dataclass
class StepDraws:
    """The randomness of one optimizer step over the global batch B.

    indices (B,) examples; noise (B, C, H, W); timesteps (B,); dropped (B,) bool, trained on the
    empty caption; flipped (B,) bool or None, mirrored images.
    """

    indices: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    dropped: torch.Tensor
    flipped: Optional[torch.Tensor]


def step_draws(step: int, seed: int, cfg: TrainConfig, num_examples: int, sample_shape: tuple[int, ...],
               num_timesteps: int, *, flips: bool = False) -> StepDraws:
    """Everything random about optimizer step ``step``, from ``(seed, step)`` alone: drawn whole on
    every process, then sliced, so a sample's randomness does not depend on the process count."""
    idx = batch_indices(step, cfg.batch_size, num_examples, seed)
    g = generator(seed, "noise", step)
    noise = torch.randn((cfg.batch_size, *sample_shape), generator=g)
    timesteps = torch.randint(0, num_timesteps, (cfg.batch_size,), generator=g)
    dropped = torch.rand(cfg.batch_size, generator=g) < cfg.condition_drop
    # drawn after the draws above, so that turning these options on leaves those unchanged
    if cfg.noise_offset > 0:
        noise += cfg.noise_offset * torch.randn((cfg.batch_size, sample_shape[0], 1, 1), generator=g)
    flipped = (torch.rand(cfg.batch_size, generator=g) < 0.5) if flips else None
    return StepDraws(idx, noise, timesteps, dropped, flipped)


class _Progress:
    """The step counter and loss log, checkpointed with accelerate's save_state."""

    def __init__(self):
        self.step = 0
        self.losses: list[dict] = []

    def state_dict(self) -> dict:
        return {"step": self.step, "losses": json.dumps(self.losses)}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.losses = json.loads(state["losses"])


def _save_checkpoint(accelerator: Accelerator, checkpoint_dir: Path) -> None:
    """Save to ``latest`` through a temp folder, so a kill mid-save keeps the previous one."""
    tmp, latest, old = checkpoint_dir / "tmp", checkpoint_dir / "latest", checkpoint_dir / "old"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if latest.exists():
            os.replace(latest, old)
        os.replace(tmp, latest)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _latest_checkpoint(checkpoint_dir: Path) -> Optional[Path]:
    for name in ("latest", "old"):  # "old" survives a kill between the two renames
        if (checkpoint_dir / name).is_dir():
            return checkpoint_dir / name
    return None


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainingError(
                "train.optimizer=adamw8bit needs bitsandbytes (pip install bitsandbytes); or use adamw"
            ) from None
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _named_parameters(modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    return {f"{prefix}.{n}": p for prefix, m in modules.items() for n, p in m.named_parameters()}


def _trainable_only_checkpoints(accelerator: Accelerator, modules: dict[str, torch.nn.Module]):
    """Save and load only the trainable parameters (a LoRA: megabytes, not the gigabytes of the
    frozen base) in accelerate checkpoints. Returns the hook handles."""
    names = [n for n, p in _named_parameters(modules).items() if p.requires_grad]

    def save_hook(models, weights, output_dir):
        state = _named_parameters(modules)
        save_file({n: state[n].detach().float().cpu().contiguous() for n in names},
                  os.path.join(output_dir, TRAINABLE_WEIGHTS))
        weights.clear()  # accelerate writes nothing more for the models

    def load_hook(models, input_dir):
        models.clear()  # accelerate must not load a full state dict
        loaded = load_file(os.path.join(input_dir, TRAINABLE_WEIGHTS))
        state = _named_parameters(modules)
        if set(loaded) != set(names):
            raise TrainingError(f"{input_dir}: checkpoint does not match the trainable parameters")
        with torch.no_grad():
            for n in names:
                state[n].copy_(loaded[n])

    return [accelerator.register_save_state_pre_hook(save_hook),
            accelerator.register_load_state_pre_hook(load_hook)]


def train_denoiser(
    unet: torch.nn.Module,
    noise_scheduler,
    data: TrainData,
    cfg: TrainConfig,
    *,
    seed: int,
    accelerator: Accelerator,
    checkpoint_dir: Path,
    objective: str = "eps",
    desc: str = "train",
    on_step: Optional[Callable[[int, torch.nn.Module], None]] = None,
    text_encoder: Optional[torch.nn.Module] = None,
) -> TrainResult:
    """Train the parameters of ``unet`` that require grad, in place, for ``cfg.steps`` optimizer
    steps, resuming from ``checkpoint_dir``. The caller decides what is trainable (all of it for a
    full finetune, the adapter for LoRA). ``on_step(step, unet)`` runs on every process after each
    optimizer step (validation images). With ``text_encoder`` given, its trainable parameters
    train too and captions are encoded every step from ``data.caption_ids``."""
    started = time.time()
    checkpoint_dir = Path(checkpoint_dir)
    num_examples = data.x0.shape[0]
    if num_examples == 0:
        raise TrainingError("the training set is empty")
    micro, accum = micro_batch_layout(cfg.batch_size, cfg.micro_batch_size, accelerator.num_processes)
    pair_fn = OBJECTIVES[objective]
    unet.train()
    modules = {"unet": unet} if text_encoder is None else {"unet": unet, "text_encoder": text_encoder}
    if text_encoder is not None:
        text_encoder.train()
        if data.caption_ids is None:
            raise TrainingError(f"{desc}: a trained text encoder needs caption token ids")
    everything = _named_parameters(modules)
    params = [p for p in everything.values() if p.requires_grad]
    if not params:
        raise TrainingError(f"{desc}: the model has no trainable parameters")
    partial = len(params) < len(everything)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = make_optimizer(params, cfg)
    lr_scheduler = get_scheduler(
        "constant_with_warmup", optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps,
        num_training_steps=cfg.steps,
    )
    # the LR scheduler stays outside prepare(): accelerate would step it once per process
    if text_encoder is not None:
        model, te_model, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    else:
        model, optimizer = accelerator.prepare(unet, optimizer)
    wrapped_models = [model] if text_encoder is None else [model, te_model]
    hooks = _trainable_only_checkpoints(accelerator, modules) if partial else []
    progress = _Progress()
    accelerator.register_for_checkpointing(progress, lr_scheduler)
    ema = None
    if cfg.ema_decay > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=cfg.ema_decay)
        accelerator.register_for_checkpointing(ema)
    resume = _latest_checkpoint(checkpoint_dir)
    if resume is not None:
        accelerator.load_state(str(resume))
        log.info("%s: resumed from %s at step %d", desc, resume, progress.step)
    resumed_from = progress.step

    device = accelerator.device
    x0_all = data.x0
    emb_all = data.caption_embeddings
    empty = data.empty_embedding
    num_timesteps = noise_scheduler.config.num_train_timesteps
    rank = accelerator.process_index
    window: list[float] = []
    bar = _progress_bar(accelerator, cfg.steps, progress.step, desc)
    while progress.step < cfg.steps:
        step = progress.step
        # the whole global batch's randomness is drawn on every process, then sliced, so a
        # sample's noise is the same whatever the process count
        draws = step_draws(step, seed, cfg, num_examples, tuple(x0_all.shape[1:]), num_timesteps,
                           flips=data.x0_flipped is not None)
        idx, noise, timesteps, dropped, flipped = (draws.indices, draws.noise, draws.timesteps, draws.dropped,
                                                   draws.flipped)
        step_loss = torch.zeros((), device=device)
        for m in range(accum):
            lo = (rank * accum + m) * micro
            sl = slice(lo, lo + micro)
            x0 = x0_all[idx[sl]]
            if flipped is not None:
                x0 = torch.where(flipped[sl, None, None, None], data.x0_flipped[idx[sl]], x0)
            x0 = x0.to(device)
            if text_encoder is None:
                emb = emb_all[data.caption_index[idx[sl]]]
                emb = torch.where(dropped[sl, None, None], empty.expand_as(emb), emb).to(device)
            else:
                ids = data.caption_ids[data.caption_index[idx[sl]]]
                ids = torch.where(dropped[sl, None], data.empty_ids.expand_as(ids), ids).to(device)
            t = timesteps[sl].to(device)
            pair = pair_fn(noise_scheduler, x0, noise[sl].to(device), t)
            sync = m == accum - 1
            ctx = contextlib.ExitStack()
            if not sync:  # gradients are all-reduced once per step, after the last micro-batch
                for wrapped in wrapped_models:
                    ctx.enter_context(accelerator.no_sync(wrapped))
            with ctx, accelerator.autocast():
                if text_encoder is not None:
                    emb = te_model(ids)[0]
                pred = model(pair.noisy, t, encoder_hidden_states=emb).sample
                weights = min_snr_weights(noise_scheduler, t, cfg.snr_gamma, objective) if cfg.snr_gamma else None
                loss = mse_loss(pred, pair.target, weights) / accum
            accelerator.backward(loss)
            step_loss += loss.detach()
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        mean_loss = accelerator.reduce(step_loss, reduction="mean").item()
        if not math.isfinite(mean_loss):
            bar.close()
            where = _latest_checkpoint(checkpoint_dir)
            kept = f"; the last good checkpoint is {where}" if where else ""
            raise TrainingError(f"{desc}: loss is {mean_loss} at step {step}; training stopped{kept}")
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        progress.step += 1
        window.append(mean_loss)
        if progress.step % cfg.log_every == 0 or progress.step == cfg.steps:
            progress.losses.append({"step": progress.step, "loss": sum(window) / len(window)})
            bar.set_postfix(loss=f"{progress.losses[-1]['loss']:.4f}")
            window = []
        bar.update(1)
        if on_step is not None:
            on_step(progress.step, accelerator.unwrap_model(model))
        if progress.step % cfg.checkpoint_every == 0 and progress.step < cfg.steps:
            _save_checkpoint(accelerator, checkpoint_dir)
    bar.close()
    for hook in hooks:
        hook.remove()
    unet = accelerator.unwrap_model(model)
    if ema is not None:  # the averaged weights are the model, as in diffusers' --use_ema
        ema.copy_to(params)
    unet.eval()
    if text_encoder is not None:
        text_encoder.eval()
    # drop accelerate's references so the next generation's prepare() starts clean
    accelerator._models.clear()
    accelerator._optimizers.clear()
    accelerator._schedulers.clear()
    accelerator._custom_objects.clear()
    final = progress.losses[-1]["loss"] if progress.losses else float("nan")
    return TrainResult(progress.step, final, progress.losses, time.time() - started, resumed_from)


def _progress_bar(accelerator: Accelerator, total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not accelerator.is_local_main_process,
                dynamic_ncols=True, leave=False)
