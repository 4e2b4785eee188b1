import torch

from chain_of_diffusion.seeding import derive_seed, generator


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "sample", 1, 5) == derive_seed(0, "sample", 1, 5)
    seeds = {derive_seed(0, "sample", g, i) for g in range(3) for i in range(100)}
    assert len(seeds) == 300
    assert derive_seed(0, "a") != derive_seed(1, "a")
    # pinned: a change here silently changes every run's images
    assert derive_seed(0, "sample", 0, 0) == 2916028440397876490


def test_generator_reproduces():
    a = torch.randn(4, generator=generator(3, "x"))
    b = torch.randn(4, generator=generator(3, "x"))
    assert torch.equal(a, b)
