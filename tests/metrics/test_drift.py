import pytest
import torch

from chain_of_diffusion.metrics.drift import (
    drift_statistics,
    high_frequency_energy,
    laplacian_variance,
    saturation,
)


def _rgb(r, g, b, size=8):
    """One image of one colour, channels in [0, 1] -> [-1, 1]."""
    return (torch.tensor([r, g, b]).view(3, 1, 1).expand(3, size, size) * 2 - 1).unsqueeze(0)


def test_saturation_known_values():
    assert saturation(_rgb(0.5, 0.5, 0.5)).item() == pytest.approx(0.0)
    assert saturation(_rgb(1.0, 0.0, 0.0)).item() == pytest.approx(1.0)
    assert saturation(_rgb(1.0, 0.5, 0.5)).item() == pytest.approx(0.5)
    assert saturation(_rgb(0.0, 0.0, 0.0)).item() == 0.0  # black: max = 0


def test_high_frequency_energy_checkerboard_flat_and_smooth():
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    checker = (((yy + xx) % 2).float() * 2 - 1).expand(1, 3, 16, 16)
    assert high_frequency_energy(checker).item() == pytest.approx(1.0)  # all power at Nyquist
    assert high_frequency_energy(_rgb(0.3, 0.3, 0.3, 16)).item() == 0.0
    ramp = torch.cos(2 * torch.pi * xx.float() / 16).expand(1, 3, 16, 16)  # 1/16 cycles/pixel
    assert high_frequency_energy(ramp).item() == pytest.approx(0.0, abs=1e-12)


def test_sharpness_drops_with_blur():
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(img, 3, stride=1, padding=1)
    assert laplacian_variance(img).item() > 4 * laplacian_variance(blurred).item()
    assert laplacian_variance(_rgb(0.2, 0.4, 0.6)).item() == pytest.approx(0.0)


def test_drift_statistics_over_mixed_sizes():
    images = [_rgb(1.0, 0.0, 0.0, 8)[0], _rgb(0.5, 0.5, 0.5, 12)[0]]
    out = drift_statistics(images)
    assert out["saturation_mean"] == pytest.approx(0.5)
    assert out["saturation_std"] == pytest.approx(0.5)
    assert out["hf_energy"] == 0.0 and out["sharpness"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least 1"):
        drift_statistics([])
