"""Rectified flow behind the process protocol: the convention of Liu et al., a 2-D GMM learned by a
small MLP through the one trainer, and the reverse ODE (data to noise) that Reflow builds on."""

import pytest
import torch
from accelerate import Accelerator

from chain_of_diffusion.config import TrainConfig
from chain_of_diffusion.processes import RectifiedFlow
from chain_of_diffusion.train import TrainData, train_denoiser

MODES = torch.tensor([[2.0, 2.0], [2.0, -2.0], [-2.0, 2.0], [-2.0, -2.0]])


def gmm(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return MODES[torch.randint(0, 4, (n,), generator=g)] + 0.3 * torch.randn(n, 2, generator=g)


class MLP(torch.nn.Module):
    """net(x_t (B, 2), t (B,), cond (B, 1)) -> velocity (B, 2)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128),
                                       torch.nn.SiLU(), torch.nn.Linear(128, 2))

    def forward(self, x, t, cond):
        return self.net(torch.cat([x, t[:, None].to(x.dtype), cond], dim=1))


def test_the_path_follows_liu_et_al():
    flow = RectifiedFlow()
    x1, x0 = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    x_t, target = flow.training_pair(x1, x0, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[2], x1[2])  # t = 0 is noise, t = 1 is data
    assert torch.allclose(x_t[1], (x0[1] + x1[1]) / 2) and torch.equal(target, x1 - x0)
    g = torch.Generator().manual_seed(0)
    uniform = flow.draw_t(g, 10_000)
    assert uniform.min() >= 1e-3 and uniform.max() <= 1 and abs(uniform.mean().item() - 0.5) < 0.02
    logit = RectifiedFlow(t_sampling="logit_normal").draw_t(g, 10_000)
    assert 0 < logit.min() and logit.max() < 1 and logit.std() < uniform.std()  # concentrated mid-path
    assert RectifiedFlow(sampler="heun").num_calls(10) == 20 and flow.num_calls(10) == 10
    with pytest.raises(ValueError, match="euler or heun"):
        RectifiedFlow(sampler="ddim")


def test_a_straight_velocity_field_is_integrated_exactly():
    """For v = x1 - x0 of one fixed pair (a perfectly straight flow), one Euler step is exact both ways."""
    x0, x1 = torch.tensor([[0.5, -1.0]]), torch.tensor([[3.0, 2.0]])
    net = lambda x, t, cond: (x1 - x0).expand_as(x)  # noqa: E731
    flow = RectifiedFlow()
    assert torch.allclose(flow.sample(net, x0, None, None, steps=1), x1)
    assert torch.allclose(flow.invert(net, x1, None, None, steps=1), x0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    data = gmm(2048, seed=0)
    train = TrainData(x0=data, caption_index=torch.zeros(2048, dtype=torch.long),
                      caption_embeddings=torch.ones(1, 1), empty_embedding=torch.zeros(1, 1))
    net, flow = MLP(), RectifiedFlow(sampler="heun")
    cfg = TrainConfig(steps=1000, batch_size=256, lr=3e-3, lr_warmup_steps=50, checkpoint_every=10**6, log_every=500)
    train_denoiser(net, flow, train, cfg, seed=0, accelerator=Accelerator(cpu=True),
                   checkpoint_dir=tmp_path_factory.mktemp("flow"), adapter=lambda module: module)
    return net.eval(), flow


def test_a_trained_flow_reproduces_the_mixture(trained):
    net, flow = trained
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(1))
    samples = flow.sample(net, noise, torch.ones(4000, 1), torch.zeros(1, 1), steps=50)
    data = gmm(4000, seed=2)
    assert torch.allclose(samples.mean(0), data.mean(0), atol=0.25), samples.mean(0)
    assert torch.allclose(torch.cov(samples.T), torch.cov(data.T), atol=0.5), torch.cov(samples.T)
    # every sample near some mode (3 sigma = 0.9), and every mode hit
    nearest = torch.cdist(samples, MODES).min(1)
    assert (nearest.values < 0.9).float().mean() > 0.9
    assert set(nearest.indices.tolist()) == {0, 1, 2, 3}


def test_inversion_round_trips(trained):
    """sample(invert(x)) gives x back: Heun, 50 steps each way, to within 0.02 (mean abs error)."""
    net, flow = trained
    x = gmm(500, seed=3)
    cond, uncond = torch.ones(500, 1), torch.zeros(1, 1)
    z = flow.invert(net, x, cond, uncond, steps=50)
    assert z.std() > 0.7  # it went back to noise, not nowhere
    back = flow.sample(net, z, cond, uncond, steps=50)
    assert (back - x).abs().mean() < 0.02, (back - x).abs().mean()


def test_straightness_is_zero_for_a_straight_field_and_positive_for_a_learned_one(trained):
    x0, x1 = torch.tensor([[0.5, -1.0]]), torch.tensor([[3.0, 2.0]])
    straight = lambda x, t, cond: (x1 - x0).expand_as(x)  # noqa: E731
    assert RectifiedFlow().straightness(straight, x0, None, None, steps=4) == 0.0
    net, flow = trained
    noise = torch.randn(500, 2, generator=torch.Generator().manual_seed(4))
    assert flow.straightness(net, noise, torch.ones(500, 1), torch.zeros(1, 1), steps=20) > 0.05


def test_reflow_on_the_flows_own_couplings_makes_it_straighter(trained, tmp_path):
    """Generation 1 of Reflow fine-tunes generation 0 on its couplings (z, ODE_0(z)), given to the
    trainer as (noise, data) pairs: its trajectories are straighter (Liu et al. 2022)."""
    import copy

    net, flow = trained
    cond, uncond = torch.ones(2048, 1), torch.zeros(1, 1)
    z = torch.randn(2048, 2, generator=torch.Generator().manual_seed(5))
    coupled = flow.sample(net, z, cond, uncond, steps=50)
    pairs = TrainData(x0=coupled, noise=z, caption_index=torch.zeros(2048, dtype=torch.long),
                      caption_embeddings=torch.ones(1, 1), empty_embedding=torch.zeros(1, 1))
    reflowed = copy.deepcopy(net).train()
    cfg = TrainConfig(steps=600, batch_size=256, lr=1e-3, lr_warmup_steps=20, checkpoint_every=10**6, log_every=300)
    train_denoiser(reflowed, flow, pairs, cfg, seed=1, accelerator=Accelerator(cpu=True), checkpoint_dir=tmp_path,
                   adapter=lambda module: module)
    probe = torch.randn(1000, 2, generator=torch.Generator().manual_seed(6))
    before = flow.straightness(net, probe, torch.ones(1000, 1), uncond, steps=20)
    after = flow.straightness(reflowed.eval(), probe, torch.ones(1000, 1), uncond, steps=20)
    assert after < 0.5 * before, (before, after)
