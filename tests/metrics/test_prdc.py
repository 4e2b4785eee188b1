import torch

from chain_of_diffusion.metrics.prdc import prdc


def test_disjoint_clusters_score_zero():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(50, 4, generator=g)
    fake = torch.randn(40, 4, generator=g) + 100.0
    assert prdc(real, fake, k=5) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_identical_sets_score_one():
    real = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    out = prdc(real, real.clone(), k=5)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["coverage"] == 1.0
    assert out["density"] >= 1.0  # each fake sits in its own ball plus its k neighbours'


def _brute(real, fake, k):
    d_rr, d_ff, d_fr = torch.cdist(real, real), torch.cdist(fake, fake), torch.cdist(fake, real)
    r = d_rr.sort(dim=1).values[:, k]  # column 0 is the point itself
    s = d_ff.sort(dim=1).values[:, k]
    inside = d_fr <= r.unsqueeze(0)
    return {
        "precision": inside.any(dim=1).double().mean().item(),
        "recall": (d_fr.T <= s.unsqueeze(0)).any(dim=1).double().mean().item(),
        "density": inside.double().sum().item() / (k * fake.shape[0]),
        "coverage": (d_fr.min(dim=0).values <= r).double().mean().item(),
    }


def test_chunked_matches_brute_force_on_overlapping_sets():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(70, 3, generator=g, dtype=torch.float64).float()
    fake = (torch.randn(55, 3, generator=g, dtype=torch.float64) * 0.7 + 1.0).float()
    expected = _brute(real.double(), fake.double(), 5)
    got = prdc(real, fake, k=5, chunk_size=7)
    for key, value in expected.items():
        assert abs(got[key] - value) < 1e-6, key
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1  # a case where both could be wrong


def test_two_feature_dimensions_are_an_error_naming_both_shapes():
    import pytest

    g = torch.Generator().manual_seed(4)
    with pytest.raises(ValueError, match=r"\(20, 3072\) and \(20, 4800\)"):
        prdc(torch.randn(20, 3072, generator=g), torch.randn(20, 4800, generator=g), k=5)
