"""The denoising-autoencoder process: a linear DAE trained through the one trainer learns the
optimal linear denoiser W = Sigma (Sigma + sigma^2 I)^-1, and one generation W(x + sigma eps)
shrinks each eigenvalue to lambda^2 / (lambda + sigma^2), the collapse of Zhu et al.'s theorem."""

import torch
from accelerate import Accelerator

from chain_of_diffusion.config import TrainConfig
from chain_of_diffusion.processes import DenoisingAutoencoder
from chain_of_diffusion.train import TrainData, train_denoiser

SIGMA = 0.5
VARIANCES = torch.tensor([4.0, 1.0, 0.25])


class LinearDenoiser(torch.nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.linear = torch.nn.Linear(d, d, bias=False)

    def forward(self, x, t, cond):
        return self.linear(x)


def test_the_pair_and_the_recursion():
    dae = DenoisingAutoencoder(SIGMA)
    x, noise = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.equal(dae.draw_t(torch.Generator(), 4), torch.full((4,), SIGMA))
    inp, target = dae.training_pair(x, noise, dae.draw_t(torch.Generator(), 4))
    assert torch.equal(inp, x + SIGMA * noise) and torch.equal(target, x)
    halve = lambda x, t, cond: x / 2  # noqa: E731
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    two = dae.sample(halve, x, None, None, steps=2, generators=gens)
    eps = [torch.stack([torch.randn(3, generator=torch.Generator().manual_seed(i)) for i in range(4)])]
    first = (x + SIGMA * eps[0]) / 2
    assert two.shape == x.shape and not torch.allclose(two, first / 2)  # fresh noise at every step
    alone = dae.sample(halve, x[2:3], None, None, steps=2, generators=[torch.Generator().manual_seed(2)])
    assert torch.equal(alone, two[2:3])  # a row depends on its own generator only


def test_a_trained_linear_dae_is_the_optimal_denoiser_and_shrinks_the_spectrum(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 3, generator=g) * VARIANCES.sqrt()
    data = TrainData(x0=x, caption_index=torch.zeros(8192, dtype=torch.long),
                     caption_embeddings=torch.ones(1, 1), empty_embedding=torch.zeros(1, 1))
    net, dae = LinearDenoiser(3), DenoisingAutoencoder(SIGMA)
    cfg = TrainConfig(steps=1500, batch_size=512, lr=1e-2, lr_warmup_steps=20, checkpoint_every=10**6,
                      log_every=500, ema_decay=0.99)
    train_denoiser(net, dae, data, cfg, seed=0, accelerator=Accelerator(cpu=True), checkpoint_dir=tmp_path,
                   adapter=lambda module: module)
    cov = torch.cov(x.T)
    optimal = cov @ torch.linalg.inv(cov + SIGMA**2 * torch.eye(3))
    assert torch.allclose(net.linear.weight.detach(), optimal, atol=0.03), net.linear.weight
    # one generation of the chain: the next training set is W(x + sigma eps)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(4000)]
    nxt = dae.sample(net, x[:4000], torch.ones(4000, 1), torch.zeros(1, 1), steps=1, generators=gens)
    predicted = VARIANCES**2 / (VARIANCES + SIGMA**2)  # 3.76, 0.80, 0.125
    measured = torch.linalg.eigvalsh(torch.cov(nxt.T)).flip(0)
    assert torch.allclose(measured, predicted, rtol=0.1), (measured, predicted)
