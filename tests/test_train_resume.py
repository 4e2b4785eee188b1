"""Resuming the trainer from a checkpoint inside a log window logs the same losses (bug: the
running loss window was not part of the checkpoint)."""

import pytest
import torch
from accelerate import Accelerator

from chain_of_diffusion.config import ModelConfig, TrainConfig
from chain_of_diffusion.models.build import build_model, encode_captions
from chain_of_diffusion.train import TrainData, train_denoiser

# the checkpoint at step 3 falls inside the log window of steps 3-4
CFG = TrainConfig(steps=6, batch_size=8, micro_batch_size=4, lr=1e-3, lr_warmup_steps=2, checkpoint_every=3,
                  log_every=2, ema_decay=0.9)


class Killed(Exception):
    pass


def _train(checkpoints, kill_after=None):
    model = build_model(ModelConfig(), resolution=16, seed=0)
    emb = encode_captions(model, ["a handwritten digit one", "a handwritten digit two", ""])
    g = torch.Generator().manual_seed(0)
    data = TrainData(x0=torch.rand(24, 3, 16, 16, generator=g) * 2 - 1, caption_index=torch.arange(24) % 2,
                     caption_embeddings=emb[:2], empty_embedding=emb[2:])

    def on_step(step, unet):
        if step == kill_after:
            raise Killed

    result = train_denoiser(model.unet, model.noise_scheduler, data, CFG, seed=3, accelerator=Accelerator(cpu=True),
                            checkpoint_dir=checkpoints, on_step=on_step)
    return result, model.unet


def test_resume_inside_a_log_window_logs_the_same_losses(tmp_path):
    straight, straight_unet = _train(tmp_path / "a")
    with pytest.raises(Killed):  # killed at step 4: the last checkpoint is step 3, mid-window
        _train(tmp_path / "b", kill_after=4)
    resumed, resumed_unet = _train(tmp_path / "b")
    assert resumed.resumed_from_step == 3
    assert [r["step"] for r in resumed.losses] == [2, 4, 6]
    assert resumed.losses == straight.losses  # exact: the step-4 mean includes step 3's loss
    assert resumed.final_loss == straight.final_loss
    # the EMA weights and the LR schedule resumed too: the models are the same bits
    for a, b in zip(straight_unet.parameters(), resumed_unet.parameters()):
        assert torch.equal(a, b)
