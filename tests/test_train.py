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


LORA_CFG = TrainConfig(mode="lora", init="base", steps=6, batch_size=8, micro_batch_size=4, lr=1e-2,
                       lr_warmup_steps=1, checkpoint_every=3, log_every=1, ema_decay=0.0, snr_gamma=5.0,
                       noise_offset=0.05, condition_drop=0.25)


def _lora_model(pipeline):
    from chain_of_diffusion.models.lora import add_lora
    from chain_of_diffusion.models.pretrained import load_pretrained

    model = load_pretrained(str(pipeline))
    add_lora(model.unet, LORA_CFG, seed=0)
    return model


def _latent_data(model, n=16):
    g = torch.Generator().manual_seed(0)
    emb = encode_captions(model, ["a digit one", "a digit two", ""])
    x0 = torch.randn(n, 4, 4, 4, generator=g)
    return TrainData(x0=x0, caption_index=torch.arange(n) % 2, caption_embeddings=emb[:2],
                     empty_embedding=emb[2:], x0_flipped=x0.flip(-1))


class _Stop(Exception):
    pass


def test_lora_training_resumes_exactly_from_an_adapter_only_checkpoint(tmp_path, tiny_sd_pipeline):
    from chain_of_diffusion.models.lora import lora_state_dict

    def run(model, folder, on_step=None):
        return train_denoiser(model.unet, model.noise_scheduler, _latent_data(model), LORA_CFG, seed=3,
                              accelerator=Accelerator(cpu=True), checkpoint_dir=folder, on_step=on_step)

    straight = _lora_model(tiny_sd_pipeline)
    base_before = straight.unet.conv_in.weight.detach().clone()
    expected = run(straight, tmp_path / "a")
    assert torch.equal(straight.unet.conv_in.weight, base_before)  # the base stayed frozen

    def stop_at_5(step, unet):
        if step == 5:
            raise _Stop

    with pytest.raises(_Stop):
        run(_lora_model(tiny_sd_pipeline), tmp_path / "b", stop_at_5)
    checkpoint = tmp_path / "b" / "latest"
    assert (checkpoint / "trainable.safetensors").is_file()
    assert not list(checkpoint.glob("model*.safetensors"))  # no copy of the frozen base
    resumed_model = _lora_model(tiny_sd_pipeline)
    resumed = run(resumed_model, tmp_path / "b")
    assert resumed.resumed_from_step == 3
    assert [r["loss"] for r in resumed.losses] == [r["loss"] for r in expected.losses]
    want, got = lora_state_dict(straight.unet), lora_state_dict(resumed_model.unet)
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert any(float(v.abs().sum()) > 0 for k, v in got.items() if "up" in k)  # it did train


def test_min_snr_weights():
    from diffusers import DDPMScheduler

    from chain_of_diffusion.processes.ddpm import min_snr_weights

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([0, 500, 999])
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    eps = min_snr_weights(sched, t, 5.0, "eps")
    assert torch.allclose(eps, torch.clamp(snr, max=5.0) / snr)
    assert eps[0] < 0.01 and eps[2] == 1.0  # low noise is down-weighted, high noise kept
    v = min_snr_weights(sched, t, 5.0, "v")
    assert torch.allclose(v, torch.clamp(snr, max=5.0) / (snr + 1))


def test_adamw8bit_without_bitsandbytes_is_a_clear_error():
    pytest.importorskip("torch")
    try:
        import bitsandbytes  # noqa: F401

        pytest.skip("bitsandbytes is installed here")
    except ImportError:
        pass
    from chain_of_diffusion.train import make_optimizer

    with pytest.raises(TrainingError, match="pip install bitsandbytes"):
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], TrainConfig(optimizer="adamw8bit"))


def test_condition_drop_and_flip_rates_over_many_steps():
    from chain_of_diffusion.train import step_draws

    cfg = TrainConfig(batch_size=32, condition_drop=0.1, noise_offset=0.05)
    draws = [step_draws(s, 7, cfg, 100, (4, 8, 8), 1000, flips=True) for s in range(300)]
    dropped = torch.cat([d.dropped for d in draws]).float().mean().item()
    flipped = torch.cat([d.flipped for d in draws]).float().mean().item()
    # 9,600 draws: the standard error of the rate is 0.003 (drop) and 0.005 (flip)
    assert abs(dropped - 0.1) < 0.015 and abs(flipped - 0.5) < 0.025
    again = step_draws(5, 7, cfg, 100, (4, 8, 8), 1000, flips=True)
    assert torch.equal(again.noise, draws[5].noise) and torch.equal(again.dropped, draws[5].dropped)
    plain = step_draws(5, 7, TrainConfig(batch_size=32, condition_drop=0.1), 100, (4, 8, 8), 1000)
    # the offset and flips are drawn last: the other draws stay as without them
    assert torch.equal(plain.timesteps, again.timesteps) and torch.equal(plain.dropped, again.dropped)
    assert plain.flipped is None and not torch.equal(plain.noise, again.noise)
