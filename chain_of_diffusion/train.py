"""The one trainer: a denoiser on a fixed set of (example, caption) pairs, through accelerate.

It does not know it is inside a chain, nor which process it trains: it takes tensors, a
:class:`~chain_of_diffusion.processes.base.Process` (which draws times and makes the (input,
target) pairs), a :class:`TrainConfig`, a seed and a checkpoint folder. Examples may have any shape
(images, latents, vectors). Two properties the chain relies on:

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from diffusers.optimization import get_scheduler

from chain_of_diffusion.checkpoints import (
    ShardedTraining,
    is_sharded,
    latest_checkpoint,
    load_checkpoint,
    named_parameters,
    save_checkpoint,
    trainable_only_checkpoints,
)
from chain_of_diffusion.config import TrainConfig
from chain_of_diffusion.errors import TrainingError
from chain_of_diffusion.models.denoisers import UNetDenoiser
from chain_of_diffusion.processes import Denoiser, Process, make_process
from chain_of_diffusion.progress import progress_bar
from chain_of_diffusion.seeding import derive_seed, generator

log = logging.getLogger(__name__)


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

    x0: (N, ...) examples: pixels (N, C, H, W) in [-1, 1], VAE latents, or vectors; caption_index: (N,)
    rows of ``caption_embeddings`` (U, L, D); empty_embedding: (1, L, D) the embedding of "";
    x0_flipped: (N, C, H, W) the encodings of the mirrored images, where ``data.random_flip``
    asks for flips (each sample of each step is flipped with probability 1/2). Where the text
    encoder trains too (its own LoRA), the captions are token ids instead of embeddings:
    caption_ids (U, L) and empty_ids (1, L), encoded anew every step. noise: (N, ...) the noise paired
    with each example where the pairs are given (Reflow's couplings (z, ODE(z))) instead of drawn.
    strata: [(rows, count)]: every global batch takes exactly ``count`` examples from each stratum's
    ``rows`` (RA Reflow: the real share of each batch); None = one stream over all examples.
    refresh: re-make the given noise during training (RA Reflow's online inversion); the trainer
    replaces ``noise`` in place and keeps it in its checkpoints.
    """

    x0: torch.Tensor
    caption_index: torch.Tensor
    caption_embeddings: Optional[torch.Tensor] = None
    empty_embedding: Optional[torch.Tensor] = None
    x0_flipped: Optional[torch.Tensor] = None
    caption_ids: Optional[torch.Tensor] = None
    empty_ids: Optional[torch.Tensor] = None
    noise: Optional[torch.Tensor] = None
    strata: Optional[list[tuple[torch.Tensor, int]]] = None
    refresh: Optional[NoiseRefresh] = None


@dataclass
class NoiseRefresh:
    """Every ``every`` optimizer steps, ``make(network)`` (called on every process with the network being
    trained, unwrapped) returns the new given noise (N, ...) for all examples."""

    every: int
    make: Callable[[torch.nn.Module], torch.Tensor]


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


def stratified_batch_indices(step: int, strata: list[tuple[torch.Tensor, int]], seed: int) -> torch.Tensor:
    """Example indices of optimizer step ``step`` with exactly ``count`` examples from each stratum's
    ``rows``: each stratum read in its own epochs of permutations, the batch then shuffled, so every
    micro-batch mixes the strata."""
    parts = [rows[batch_indices(step, count, len(rows), derive_seed(seed, "stratum", k))]
             for k, (rows, count) in enumerate(strata) if count]
    batch = torch.cat(parts)
    return batch[torch.randperm(len(batch), generator=generator(seed, "strata-order", step))]


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
               draw_t: Callable[[torch.Generator, int], torch.Tensor] | int, *, flips: bool = False,
               strata: Optional[list[tuple[torch.Tensor, int]]] = None) -> StepDraws:
    """Everything random about optimizer step ``step``, from ``(seed, step)`` alone: drawn whole on
    every process, then sliced, so a sample's randomness does not depend on the process count.

    ``draw_t(generator, n)`` is the process's time distribution (an int n stands for integer
    timesteps uniform in [0, n), the DDPM one); ``sample_shape`` is one example's shape, any rank;
    ``strata``: see :attr:`TrainData.strata`.
    """
    if isinstance(draw_t, int):
        num_timesteps = draw_t
        draw_t = lambda g, n: torch.randint(0, num_timesteps, (n,), generator=g)  # noqa: E731
    if strata is not None:
        idx = stratified_batch_indices(step, strata, seed)
    else:
        idx = batch_indices(step, cfg.batch_size, num_examples, seed)
    g = generator(seed, "noise", step)
    noise = torch.randn((cfg.batch_size, *sample_shape), generator=g)
    timesteps = draw_t(g, cfg.batch_size)
    dropped = torch.rand(cfg.batch_size, generator=g) < cfg.condition_drop
    # drawn after the draws above, so that turning these options on leaves those unchanged
    if cfg.noise_offset > 0:  # one offset per example and channel, shared over the other axes
        offset_shape = (cfg.batch_size, sample_shape[0], *([1] * (len(sample_shape) - 1)))
        noise += cfg.noise_offset * torch.randn(offset_shape, generator=g)
    flipped = (torch.rand(cfg.batch_size, generator=g) < 0.5) if flips else None
    return StepDraws(idx, noise, timesteps, dropped, flipped)


def _rows_where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row i of ``a`` where ``mask[i]``, else row i of ``b``; rows of any shape."""
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def mse_loss(pred: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared error, optionally weighted per sample (weights: (B,)), in fp32."""
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()


class _Progress:
    """The step counter, the loss log and the running loss window of the current log interval.

    The window is part of the state: a checkpoint inside a log interval would otherwise lose the
    losses before it, and the resumed run would log a different mean for that interval.
    """

    def __init__(self):
        self.step = 0
        self.losses: list[dict] = []
        self.window: list[float] = []

    def state_dict(self) -> dict:
        return {"step": self.step, "losses": json.dumps(self.losses), "window": json.dumps(self.window)}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.losses = json.loads(state["losses"])
        self.window = json.loads(state.get("window", "[]"))

    def record(self, loss: float, log_every: int, last_step: int) -> Optional[float]:
        """Count one optimizer step of loss ``loss``; the interval's mean when it closes."""
        self.step += 1
        self.window.append(loss)
        if self.step % log_every and self.step != last_step:
            return None
        mean = sum(self.window) / len(self.window)
        self.losses.append({"step": self.step, "loss": mean})
        self.window = []
        return mean


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


@dataclass
class _Session:
    """What one training run holds between optimizer steps."""

    model: torch.nn.Module  # the denoiser network as accelerate prepared it
    text_model: Optional[torch.nn.Module]  # the text encoder as prepared, where it trains
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    params: list[torch.nn.Parameter]
    ema: Any = None
    progress: _Progress = field(default_factory=_Progress)
    hooks: list = field(default_factory=list)
    sharded: Optional[ShardedTraining] = None  # FSDP: the checkpoints the chain saves itself

    def trainer_state(self) -> dict:
        state = {"progress": self.progress.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_trainer_state(self, state: dict) -> None:
        self.progress.load_state_dict(state["progress"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


def _as_process(process, objective: Optional[str], cfg: TrainConfig) -> Process:
    """A diffusers noise scheduler stands for the DDPM process of ``objective`` (default eps)."""
    if hasattr(process, "training_pair"):
        return process
    return make_process(objective or "eps", process, snr_gamma=cfg.snr_gamma)


def _size_deepspeed(accelerator: Accelerator, micro: int, accum: int, cfg: TrainConfig) -> None:
    """DeepSpeed sizes its batches from a dataloader passed to prepare(), which the chain does not use
    (it draws its own batches): give it the chain's micro-batch, accumulation and clipping instead."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum,
                                       gradient_clipping=cfg.max_grad_norm)


def _start(accelerator: Accelerator, unet: torch.nn.Module, text_encoder: Optional[torch.nn.Module],
           cfg: TrainConfig, desc: str) -> _Session:
    """Optimizer, LR schedule, EMA and accelerate's wrappers for the parameters that require grad."""
    modules = {"unet": unet} if text_encoder is None else {"unet": unet, "text_encoder": text_encoder}
    everything = named_parameters(modules)
    params = [p for p in everything.values() if p.requires_grad]
    if not params:
        raise TrainingError(f"{desc}: the model has no trainable parameters")
    for net in modules.values():
        net.train()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = make_optimizer(params, cfg)
    lr_scheduler = get_scheduler(
        "constant_with_warmup", optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps,
        num_training_steps=cfg.steps,
    )
    # the LR scheduler stays outside prepare(): accelerate would step it once per process
    if text_encoder is not None:
        model, text_model, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    else:
        (model, optimizer), text_model = accelerator.prepare(unet, optimizer), None
    # FSDP replaced the parameters by sharded ones (and accelerate switched the optimizer to them)
    params = [p for p in named_parameters(modules).values() if p.requires_grad]
    ema = None
    if cfg.ema_decay > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=cfg.ema_decay)
    if is_sharded(params):
        log.info("%s: FSDP shards the model over %d processes (%d trainable tensors)", desc,
                 accelerator.num_processes, len(params))
        return _Session(model, text_model, optimizer, lr_scheduler, params, ema,
                        sharded=ShardedTraining(modules, optimizer))
    partial = len(params) < len(everything)
    hooks = trainable_only_checkpoints(accelerator, modules) if partial else []
    return _Session(model, text_model, optimizer, lr_scheduler, params, ema, hooks=hooks)


def _batch_rows(data: TrainData, rows: torch.Tensor, flipped: Optional[torch.Tensor]) -> torch.Tensor:
    """The clean examples ``rows`` of the training set, mirrored where ``flipped``."""
    x1 = data.x0[rows]
    if flipped is not None:
        x1 = _rows_where(flipped, data.x0_flipped[rows], x1)
    return x1


def _conditioning(data: TrainData, rows: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """Caption embeddings (or token ids where the text encoder trains) of ``rows``, the empty
    caption where ``dropped`` (condition drop)."""
    captions = data.caption_index[rows]
    if data.caption_ids is not None:
        ids = data.caption_ids[captions]
        return _rows_where(dropped, data.empty_ids.expand_as(ids), ids)
    emb = data.caption_embeddings[captions]
    return _rows_where(dropped, data.empty_embedding.expand_as(emb), emb)


def _optimizer_step(session: _Session, process: Process, net: Denoiser, data: TrainData, draws: StepDraws,
                    cfg: TrainConfig, accelerator: Accelerator, micro: int, accum: int) -> float:
    """One optimizer step over this process's micro-batches of the global batch; the mean loss over
    all processes."""
    device = accelerator.device
    wrapped = [m for m in (session.model, session.text_model) if m is not None]
    # DeepSpeed divides the loss by its accumulation steps itself and reduces gradients at its own boundary
    # (ZeRO-2's engine refuses no_sync)
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    step_loss = torch.zeros((), device=device)
    for m in range(accum):
        lo = (accelerator.process_index * accum + m) * micro
        sl = slice(lo, lo + micro)
        rows = draws.indices[sl]
        x1 = _batch_rows(data, rows, None if draws.flipped is None else draws.flipped[sl]).to(device)
        cond = _conditioning(data, rows, draws.dropped[sl]).to(device)
        t = draws.timesteps[sl].to(device)
        noise = draws.noise[sl] if data.noise is None else data.noise[rows]
        x_t, target = process.training_pair(x1, noise.to(device), t)
        ctx = contextlib.ExitStack()
        if m < accum - 1 and not deepspeed:  # gradients are all-reduced once per step, after the last micro-batch
            for model in wrapped:
                ctx.enter_context(accelerator.no_sync(model))
        with ctx, accelerator.autocast():
            if session.text_model is not None:
                cond = session.text_model(cond)[0]
            pred = net(x_t, t, cond)
            loss = mse_loss(pred, target, process.loss_weights(t))
        accelerator.backward(loss if deepspeed else loss / accum)
        step_loss += loss.detach() / accum
    if cfg.max_grad_norm > 0:
        accelerator.clip_grad_norm_(session.params, cfg.max_grad_norm)
    return accelerator.reduce(step_loss, reduction="mean").item()


def train_denoiser(
    unet: torch.nn.Module,
    process,
    data: TrainData,
    cfg: TrainConfig,
    *,
    seed: int,
    accelerator: Accelerator,
    checkpoint_dir: Path,
    objective: Optional[str] = None,
    desc: str = "train",
    on_step: Optional[Callable[[int, torch.nn.Module], None]] = None,
    text_encoder: Optional[torch.nn.Module] = None,
    adapter: Callable[[torch.nn.Module], Denoiser] = UNetDenoiser,
) -> TrainResult:
    """Train the parameters of ``unet`` that require grad, in place, for ``cfg.steps`` optimizer
    steps of ``process`` (a :class:`~chain_of_diffusion.processes.base.Process`, or a diffusers
    noise scheduler for the DDPM process of ``objective``), resuming from ``checkpoint_dir``.

    The caller decides what is trainable (all of it for a full finetune, the adapter for LoRA).
    ``on_step(step, unet)`` runs on every process after each optimizer step (validation images).
    With ``text_encoder`` given, its trainable parameters train too and captions are encoded every
    step from ``data.caption_ids``. ``adapter`` turns the network (as accelerate prepared it) into
    the ``net(x_t, t, cond)`` call the process trains: a UNet with CLIP embeddings by default; any
    network already called that way (an MLP on vectors) passes ``adapter=lambda net: net``.
    """
    started = time.time()
    checkpoint_dir = Path(checkpoint_dir)
    process = _as_process(process, objective, cfg)
    num_examples = data.x0.shape[0]
    if num_examples == 0:
        raise TrainingError("the training set is empty")
    if data.noise is not None and data.x0_flipped is not None:
        raise TrainingError(f"{desc}: given (noise, data) pairs cannot be flipped (the pairing would break)")
    if text_encoder is not None and data.caption_ids is None:
        raise TrainingError(f"{desc}: a trained text encoder needs caption token ids")
    if data.strata is not None and sum(count for _, count in data.strata) != cfg.batch_size:
        raise TrainingError(f"{desc}: the strata's rows per batch do not add up to train.batch_size={cfg.batch_size}")
    if data.strata is not None and any(count and not len(rows) for rows, count in data.strata):
        raise TrainingError(f"{desc}: a stratum that must give rows to every batch has no examples")
    micro, accum = micro_batch_layout(cfg.batch_size, cfg.micro_batch_size, accelerator.num_processes)
    _size_deepspeed(accelerator, micro, accum, cfg)
    session = _start(accelerator, unet, text_encoder, cfg, desc)
    progress = session.progress
    net = adapter(session.model)
    resume = latest_checkpoint(checkpoint_dir)
    if resume is not None:
        state = load_checkpoint(accelerator, resume, session.sharded)
        session.load_trainer_state(state)
        if data.refresh is not None and "given_noise" in state:  # as refreshed before the checkpoint
            data.noise = state["given_noise"]
        log.info("%s: resumed from %s at step %d", desc, resume, progress.step)
    resumed_from = progress.step
    bar = progress_bar(accelerator, cfg.steps, desc, initial=progress.step)
    while progress.step < cfg.steps:
        step = progress.step
        draws = step_draws(step, seed, cfg, num_examples, tuple(data.x0.shape[1:]), process.draw_t,
                           flips=data.x0_flipped is not None, strata=data.strata)
        mean_loss = _optimizer_step(session, process, net, data, draws, cfg, accelerator, micro, accum)
        if not math.isfinite(mean_loss):
            bar.close()
            where = latest_checkpoint(checkpoint_dir)
            kept = f"; the last good checkpoint is {where}" if where else ""
            raise TrainingError(f"{desc}: loss is {mean_loss} at step {step}; training stopped{kept}")
        session.optimizer.step()
        session.lr_scheduler.step()
        session.optimizer.zero_grad(set_to_none=True)
        if session.ema is not None:
            session.ema.step(session.params)
        logged = progress.record(mean_loss, cfg.log_every, cfg.steps)
        if logged is not None:
            bar.set_postfix(loss=f"{logged:.4f}")
        bar.update(1)
        if on_step is not None:
            on_step(progress.step, accelerator.unwrap_model(session.model))
        if data.refresh is not None and progress.step % data.refresh.every == 0 and progress.step < cfg.steps:
            data.noise = data.refresh.make(accelerator.unwrap_model(session.model))
        if progress.step % cfg.checkpoint_every == 0 and progress.step < cfg.steps:
            state = session.trainer_state()
            if data.refresh is not None:  # made by weights a resumed run no longer has
                state["given_noise"] = data.noise
            save_checkpoint(accelerator, checkpoint_dir, state, session.sharded)
    bar.close()
    return _finish(accelerator, session, unet, text_encoder, started, resumed_from)


def _finish(accelerator: Accelerator, session: _Session, unet: torch.nn.Module,
            text_encoder: Optional[torch.nn.Module], started: float, resumed_from: int) -> TrainResult:
    """Leave the trained weights (the EMA average where there is one) in ``unet``, in eval mode,
    and release accelerate's references so the next generation's ``prepare()`` starts clean."""
    for hook in session.hooks:
        hook.remove()
    if session.ema is not None:  # the averaged weights are the model, as in diffusers' --use_ema
        session.ema.copy_to(session.params)
    unet.eval()
    if text_encoder is not None:
        text_encoder.eval()
    accelerator.free_memory()
    progress = session.progress
    final = progress.losses[-1]["loss"] if progress.losses else float("nan")
    return TrainResult(progress.step, final, progress.losses, time.time() - started, resumed_from)
