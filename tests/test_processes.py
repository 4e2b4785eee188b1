"""The diffusion-process protocol: eps/v over diffusers schedulers, on data of any shape."""

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler

from chain_of_diffusion.config import TrainConfig
from chain_of_diffusion.processes import PROCESSES, DDPMProcess, guided, make_process
from chain_of_diffusion.train import TrainData, train_denoiser


def test_eps_and_v_pairs_follow_the_diffusers_conventions():
    sched = DDPMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(0)
    x1, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    x_t, target = make_process("eps", sched).training_pair(x1, noise, t)
    assert torch.equal(x_t, sched.add_noise(x1, noise, t)) and torch.equal(target, noise)
    x_t_v, v = make_process("v", sched).training_pair(x1, noise, t)
    assert torch.equal(x_t_v, x_t) and torch.equal(v, sched.get_velocity(x1, noise, t))
    drawn = make_process("eps", sched).draw_t(torch.Generator().manual_seed(1), 5000)
    assert drawn.dtype == torch.long and drawn.min() >= 0 and drawn.max() <= 999 and drawn.float().std() > 250
    assert set(PROCESSES) == {"eps", "v", "flow", "dae"}


def test_guidance_extrapolates_from_the_unconditional_prediction():
    calls = []

    def net(x, t, cond):
        calls.append(x.shape[0])
        return x + cond

    x, cond, uncond = torch.zeros(3, 2), torch.ones(3, 2), torch.zeros(1, 2)
    t = torch.zeros(3)
    assert torch.equal(guided(net, x, t, cond, uncond, 1.0), torch.ones(3, 2)) and calls == [3]
    assert torch.equal(guided(net, x, t, cond, uncond, 3.0), torch.full((3, 2), 3.0)) and calls[-1] == 6


class VectorDenoiser(torch.nn.Module):
    """A small MLP on 2-d points, conditioned on a class embedding: ``net(x_t, t, cond)``."""

    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(2 + 1 + 2, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64),
                                       torch.nn.SiLU(), torch.nn.Linear(64, 2))

    def forward(self, x, t, cond):
        return self.mlp(torch.cat([x, t.float()[:, None] / 1000, cond], dim=1))


def test_the_trainer_and_sampler_run_a_vector_process_with_an_mlp(tmp_path):
    """Two classes of 2-d points at (+2, +2) and (-2, -2): the conditional samples land on their class."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(512) % 2
    centers = torch.tensor([[2.0, 2.0], [-2.0, -2.0]])
    x0 = centers[labels] + 0.3 * torch.randn(512, 2, generator=g)
    onehot = torch.eye(2)
    data = TrainData(x0=x0, caption_index=labels, caption_embeddings=onehot, empty_embedding=torch.zeros(1, 2))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    process = DDPMProcess(sched, "eps", sampler="ddim")
    net = VectorDenoiser()
    cfg = TrainConfig(steps=600, batch_size=64, lr=3e-3, lr_warmup_steps=10, checkpoint_every=10**6, log_every=100,
                      condition_drop=0.1)
    result = train_denoiser(net, process, data, cfg, seed=0, accelerator=Accelerator(cpu=True),
                            checkpoint_dir=tmp_path, adapter=lambda module: module)
    assert result.steps == 600 and result.losses[-1]["loss"] < result.losses[0]["loss"]
    noise = torch.randn(200, 2, generator=torch.Generator().manual_seed(1))
    for label in (0, 1):
        cond = onehot[label].expand(200, 2)
        samples = process.sample(net, noise, cond, torch.zeros(1, 2), steps=25, guidance=[1.0] * 25)
        assert samples.shape == (200, 2)
        assert torch.allclose(samples.mean(0), centers[label], atol=0.5), (label, samples.mean(0))
