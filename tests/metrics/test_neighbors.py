import pytest
import torch

from chain_of_diffusion.metrics import generalization_score, knn_distances, memorization_ratio


def brute_force(queries, refs, k, exclude_self=False):
    d = torch.cdist(queries.double(), refs.double(), compute_mode="donot_use_mm_for_euclid_dist")
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    return d.topk(k, dim=1, largest=False).values.float()


def test_matches_brute_force_over_several_chunks():
    gen = torch.Generator().manual_seed(0)
    q, r = torch.randn(257, 8, generator=gen), torch.randn(300, 8, generator=gen)
    got = knn_distances(q, r, k=5, chunk_size=64)
    assert got.shape == (257, 5)
    torch.testing.assert_close(got, brute_force(q, r, 5), atol=1e-5, rtol=1e-5)
    assert (got[:, 1:] >= got[:, :-1]).all()


def test_exclude_self_matches_brute_force_and_keeps_duplicates():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 5, generator=gen)
    x[10] = x[3]  # a duplicate pair: each is the other's nearest neighbour at distance 0
    got = knn_distances(x, x, k=3, chunk_size=32, exclude_self=True)
    torch.testing.assert_close(got, brute_force(x, x, 3, exclude_self=True), atol=1e-5, rtol=1e-5)
    assert got[3, 0] == 0 and got[10, 0] == 0
    assert (got[torch.arange(200) != 3][:, 0][:9] > 0).all()
    assert knn_distances(x, x, k=1)[:, 0].abs().max() == 0  # without exclusion, self is nearest


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("exclude_self", [True, False])
@pytest.mark.parametrize("chunk_size", [16, 100, 300, 5000])
def test_symmetric_path_equals_plain_path(k, exclude_self, chunk_size):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(333, 12, generator=gen) + 3.0
    x[7] = x[200]  # duplicates: exactly 0 either way
    sym = knn_distances(x, x, k=k, chunk_size=chunk_size, exclude_self=exclude_self, symmetric=True)
    plain = knn_distances(x, x, k=k, chunk_size=chunk_size, exclude_self=exclude_self, symmetric=False)
    assert torch.equal(sym, plain)
    torch.testing.assert_close(sym, brute_force(x, x, k, exclude_self=exclude_self), atol=1e-5, rtol=1e-5)
    assert sym[7, 0] == 0 and sym[200, 0] == 0


def test_symmetric_is_the_default_for_a_self_search_over_several_blocks(monkeypatch):
    from chain_of_diffusion.metrics import neighbors

    calls = []
    real = neighbors._knn_indices_symmetric
    monkeypatch.setattr(neighbors, "_knn_indices_symmetric", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(6))
    knn_distances(x, x, k=2, chunk_size=16)
    knn_distances(x, x, k=2, chunk_size=16, exclude_self=True)
    assert len(calls) == 2
    knn_distances(x, x, k=2)  # one block: the plain path does the same work
    knn_distances(x, x.clone(), k=2, chunk_size=16)
    knn_distances(x, x, k=2, chunk_size=16, symmetric=False)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="symmetric"):
        knn_distances(x, x[:10], k=1, symmetric=True)


def test_k_too_large_is_an_error():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="k=4"):
        knn_distances(x, x, k=4, exclude_self=True)


def test_memorization_of_copies():
    gen = torch.Generator().manual_seed(2)
    train = torch.randn(300, 16, generator=gen)
    copies = train[:100].clone()
    assert memorization_ratio(copies, train) == 1.0
    noisy = copies + 1e-4 * torch.randn(copies.shape, generator=gen)
    assert memorization_ratio(noisy, train) == 1.0


def test_memorization_of_fresh_samples_is_near_zero():
    gen = torch.Generator().manual_seed(3)
    train, fresh = torch.randn(500, 16, generator=gen), torch.randn(200, 16, generator=gen)
    assert memorization_ratio(fresh, train) < 0.02


def test_memorization_duplicated_training_image_counts():
    train = torch.randn(10, 3, generator=torch.Generator().manual_seed(4))
    train[1] = train[0]  # d1 = d2 = 0 for a copy of it
    assert memorization_ratio(train[:1].clone(), train) == 1.0


def test_generalization_score_is_mean_nn_distance():
    train = torch.zeros(3, 2)
    train[1, 0], train[2, 0] = 10.0, 20.0
    samples = torch.tensor([[1.0, 0.0], [10.0, 3.0]])
    assert generalization_score(samples, train) == pytest.approx(2.0)
    assert generalization_score(train, train) == 0.0
