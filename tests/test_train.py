import pytest
import torch
from accelerate import Accelerator

from chain_of_diffusion.config import ModelConfig, TrainConfig
from chain_of_diffusion.models.build import build_model, encode_captions
from chain_of_diffusion.train import (
    TrainData,
    TrainingError,
    batch_indices,
    micro_batch_layout,
    train_denoiser,
)


def make_data(model, n=24):
    g = torch.Generator().manual_seed(0)
    emb = encode_captions(model, ["a handwritten digit one", "a handwritten digit two", ""])
    return TrainData(
        x0=torch.rand(n, 3, 16, 16, generator=g) * 2 - 1,
        caption_index=torch.arange(n) % 2,
        caption_embeddings=emb[:2],
        empty_embedding=emb[2:],
    )


def fresh(seed=0):
    return build_model(ModelConfig(), resolution=16, seed=seed)


def weights(unet):
    return torch.cat([p.detach().flatten() for p in unet.parameters()])


CFG = TrainConfig(steps=6, batch_size=8, micro_batch_size=4, lr=1e-3, lr_warmup_steps=2,
                  checkpoint_every=3, log_every=1, condition_drop=0.25)


def test_micro_batch_layout():
    assert micro_batch_layout(32, None, 1) == (32, 1)
    assert micro_batch_layout(32, None, 2) == (16, 1)
    assert micro_batch_layout(32, 8, 2) == (8, 2)
    with pytest.raises(TrainingError, match="multiple"):
        micro_batch_layout(30, 8, 2)


def test_batch_order_covers_each_epoch_once():
    first_epoch = torch.cat([batch_indices(s, 5, 10, seed=1) for s in range(2)])
    assert sorted(first_epoch.tolist()) == list(range(10))
    assert torch.equal(batch_indices(3, 5, 10, seed=1), batch_indices(3, 5, 10, seed=1))
    assert not torch.equal(batch_indices(0, 5, 10, seed=1), batch_indices(0, 5, 10, seed=2))


def test_loss_values_are_exact_and_training_changes_weights(tmp_path):
    model = fresh()
    before = weights(model.unet).clone()
    result = train_denoiser(model.unet, model.noise_scheduler, make_data(model), CFG, seed=7,
                            accelerator=Accelerator(cpu=True), checkpoint_dir=tmp_path / "a")
    assert result.steps == 6 and len(result.losses) == 6
    again = fresh()
    result2 = train_denoiser(again.unet, again.noise_scheduler, make_data(again), CFG, seed=7,
                             accelerator=Accelerator(cpu=True), checkpoint_dir=tmp_path / "b")
    assert [r["loss"] for r in result.losses] == [r["loss"] for r in result2.losses]
    assert not torch.equal(before, weights(model.unet))
    assert torch.equal(weights(model.unet), weights(again.unet))


def test_resume_from_checkpoint_is_exact(tmp_path):
    straight = fresh()
    train_denoiser(straight.unet, straight.noise_scheduler, make_data(straight), CFG, seed=3,
                   accelerator=Accelerator(cpu=True), checkpoint_dir=tmp_path / "straight")
    # an interrupted run: 4 steps (checkpoint at step 3), then a new process resumes to 6
    part = fresh()
    short = TrainConfig(**{**CFG.__dict__, "steps": 4})
    train_denoiser(part.unet, part.noise_scheduler, make_data(part), short, seed=3,
                   accelerator=Accelerator(cpu=True), checkpoint_dir=tmp_path / "resumed")
    assert (tmp_path / "resumed" / "latest").is_dir()
    resumed = fresh()
    result = train_denoiser(resumed.unet, resumed.noise_scheduler, make_data(resumed), CFG, seed=3,
                            accelerator=Accelerator(cpu=True), checkpoint_dir=tmp_path / "resumed")
    assert result.resumed_from_step == 3
    assert torch.equal(weights(straight.unet), weights(resumed.unet))


def test_nan_loss_stops_training(tmp_path):
    model = fresh()
    data = make_data(model)
    data.x0[0] = float("nan")
    with pytest.raises(TrainingError, match="loss is nan"):
        train_denoiser(model.unet, model.noise_scheduler, data, CFG, seed=0,
                       accelerator=Accelerator(cpu=True), checkpoint_dir=tmp_path / "c")
