import math

import pytest
import torch

from chain_of_diffusion.batching import UNET_ROWS
from chain_of_diffusion.config import ModelConfig, SampleConfig
from chain_of_diffusion.generate import render
from chain_of_diffusion.models.build import build_model, encode_captions
from chain_of_diffusion.models.denoisers import UNetDenoiser
from chain_of_diffusion.processes import DDPMProcess, guidance_scales


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(), resolution=16, seed=0)


def test_guidance_schedules_match_their_formulas():
    assert guidance_scales("constant", 3.0, 1.0, 4) == [3.0] * 4
    assert guidance_scales("linear", 3.0, 1.0, 5) == pytest.approx([3.0, 2.5, 2.0, 1.5, 1.0])
    cos = guidance_scales("cosine", 3.0, 1.0, 3)
    assert cos == pytest.approx([3.0, 2.0, 1.0])
    exp = guidance_scales("exponential", 4.0, 1.0, 3)
    assert exp == pytest.approx([4.0, 2.0, 1.0])
    assert guidance_scales("linear", 2.0, 1.0, 1) == [2.0]
    with pytest.raises(ValueError):
        guidance_scales("exponential", 0.0, 1.0, 3)


def test_scale_one_skips_the_unconditional_half_with_the_same_result(model):
    calls = []
    unet = model.unet

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return unet(*args, **kwargs)

    noise = torch.randn(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    emb = encode_captions(model, ["a", "b", "c", ""])
    cond, uncond = emb[torch.arange(40) % 3], emb[3:]
    process, net = DDPMProcess(model.noise_scheduler, sampler="ddim"), UNetDenoiser(counting, rows=UNET_ROWS)
    fast = process.sample(net, noise, cond, uncond, steps=3, guidance=[1.0] * 3)
    per_step = -(-40 // UNET_ROWS)
    assert calls == [UNET_ROWS] * 3 * per_step  # 40 conditional rows in fixed-size calls, no unconditional half
    calls.clear()
    full = process.sample(net, noise, cond, uncond, steps=3, guidance=[1.0 + 1e-7] * 3)
    assert calls == [UNET_ROWS] * 3 * -(-80 // UNET_ROWS)  # 80 rows: the unconditional half is computed
    assert torch.allclose(fast, full, atol=1e-4)


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm", "dpmsolver++", "euler", "pndm", "heun"])
def test_images_do_not_depend_on_batch_size(model, scheduler):
    requests = [{"text": f"a handwritten digit {w}", "seed": 100 + i} for i, w in enumerate(["one", "two"] * 5)]
    big = render(model, requests, SampleConfig(steps=4, batch_size=10, scheduler=scheduler))
    small = render(model, requests, SampleConfig(steps=4, batch_size=5, scheduler=scheduler))
    alone = render(model, requests[7:8], SampleConfig(steps=4, batch_size=1, scheduler=scheduler))
    assert big.shape == (10, 3, 16, 16)
    assert torch.equal(big, small)
    assert torch.equal(big[7:8], alone)
    assert not torch.equal(big[0], big[2])  # different seeds, different images


def test_guidance_changes_the_image(model):
    requests = [{"text": "a handwritten digit one", "seed": 5}]
    a = render(model, requests, SampleConfig(steps=3, guidance_scale=1.0))
    b = render(model, requests, SampleConfig(steps=3, guidance_scale=5.0))
    assert not torch.equal(a, b) and math.isfinite(b.abs().max().item())
