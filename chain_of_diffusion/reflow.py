"""Reflow's and RA Reflow's given (noise, data) pairs for generation g >= 1 of a flow chain.

Reflow (Liu et al. 2022) trains on couplings (z, ODE_{g-1}(z)): each sample's noise z is re-created
from its recorded seed, so the run stores no noise. RA Reflow (Zhu et al. 2024) adds real images x
paired with invert_{g-1}(x), the previous flow's reverse ODE, and holds the real share fixed in every
batch; with ``mix.refresh_real_pairs_every`` the real images are re-inverted with the model being
trained (the online variant). Inversions are sharded over processes like generation.
"""

from __future__ import annotations

import dataclasses

import torch
from accelerate.utils import gather_object

from chain_of_diffusion.errors import DataError
from chain_of_diffusion.generate import initial_noise, invert_to_noise
from chain_of_diffusion.mix import real_fraction_at
from chain_of_diffusion.train import NoiseRefresh, TrainData

REFLOW_POLICIES = ("reflow", "ra_reflow")


def coupling_noise(records: list[dict], shape: tuple[int, ...]) -> torch.Tensor:
    """The noise each generated sample was made from, re-created from its recorded seed. (N, *shape)."""
    missing = [r["file_name"] for r in records if r.get("seed") is None or r.get("source") == "real"]
    if missing:
        raise DataError(f"mix.policy=reflow: {missing[0]} has no generating seed (a real image?); "
                        "reflow trains on generated samples only")
    return torch.stack([initial_noise(int(r["seed"]), shape) for r in records])


def invert_rows(model, records: list[dict], x1: torch.Tensor, cfg, process, accelerator) -> torch.Tensor:
    """The reverse ODE of ``model``'s flow from examples ``x1`` (N, ...) captioned by ``records``, each
    process inverting its share; every process gets all N results, in order."""
    positions = list(range(len(records)))
    with accelerator.split_between_processes(positions) as mine, accelerator.autocast():
        mine = list(mine)
        noise = (invert_to_noise(model, [records[i] for i in mine], x1[mine], cfg.sample, process)
                 if mine else None)
        shard = [(p, noise[k].float().numpy()) for k, p in enumerate(mine)]
    gathered = sorted(gather_object(shard), key=lambda item: item[0])
    return torch.stack([torch.from_numpy(array) for _, array in gathered])


def give_pairs(ctx, generation: int, records: list[dict], data: TrainData, model, process) -> dict:
    """Set ``data``'s given noise (and, for RA Reflow, its strata and refresh) for generation
    ``generation``; ``model`` is the model about to be trained. Returns what the train log records."""
    cfg = ctx.cfg
    real = torch.tensor([r.get("source") == "real" for r in records])
    synthetic_rows, real_rows = (~real).nonzero().flatten(), real.nonzero().flatten()
    if cfg.mix.policy == "reflow":
        data.noise = coupling_noise(records, model.sample_shape)
        return {"given_noise": True}
    noise = torch.empty_like(data.x0)
    if len(synthetic_rows):
        noise[synthetic_rows] = coupling_noise([records[i] for i in synthetic_rows], model.sample_shape)
    real_records = [records[i] for i in real_rows]
    previous = ctx.trained_model(generation - 1)
    noise[real_rows] = invert_rows(previous, real_records, data.x0[real_rows], cfg, process, ctx.accelerator)
    del previous
    data.noise = noise
    per_batch = round(real_fraction_at(cfg, generation) * cfg.train.batch_size)
    data.strata = [(real_rows, per_batch), (synthetic_rows, cfg.train.batch_size - per_batch)]
    every = cfg.mix.refresh_real_pairs_every
    if every:
        def reinvert(network: torch.nn.Module) -> torch.Tensor:
            was_training = network.training
            network.eval()
            current = dataclasses.replace(model, unet=network)
            fresh = data.noise.clone()
            fresh[real_rows] = invert_rows(current, real_records, data.x0[real_rows], cfg, process, ctx.accelerator)
            network.train(was_training)
            return fresh

        data.refresh = NoiseRefresh(every, reinvert)
    return {"given_noise": True, "real_pairs": len(real_rows), "real_per_batch": per_batch,
            "real_pair_refreshes": len(range(every, cfg.train.steps, every)) if every else 0}
