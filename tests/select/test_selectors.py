import pytest
import torch

from chain_of_diffusion.metrics import knn_entropy
from chain_of_diffusion.select import SELECTORS, select_indices

METHODS = ["random", "greedy_entropy", "threshold_decay"]


def _feats(n=120, d=5, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _grid(n=11):
    return torch.arange(n, dtype=torch.float32).unsqueeze(1)


def _reference_threshold_decay(x, budget, order, tau, alpha, decay_when, pass_size):
    """Literal, loop-by-loop Threshold Decay Filter over a stream read in passes, for comparison."""
    picks = []
    while len(picks) < budget:
        stream = [i for i in order.tolist() if i not in picks]
        for start in range(0, len(stream), pass_size):
            added = 0
            for i in stream[start : start + pass_size]:
                if all((x[i] - x[j]).norm().item() > tau for j in picks):
                    picks.append(i)
                    added += 1
                    if len(picks) == budget:
                        return picks
            if decay_when == "every_pass" or added == 0:
                tau *= alpha
    return picks


def _in_stream_order(values, seed):
    """(N, 1) features whose seeded stream (the selector's random order) reads ``values`` in turn."""
    order = torch.randperm(len(values), generator=torch.Generator().manual_seed(seed))
    x = torch.empty(len(values), 1)
    x[order, 0] = torch.tensor(values, dtype=torch.float32)
    return x, order


def test_registry_names():
    assert set(SELECTORS) == set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_count_distinct_range_deterministic(method):
    x = _feats()
    idx = select_indices(method, x, 17, seed=3)
    assert idx.dtype == torch.long and idx.shape == (17,)
    assert len(set(idx.tolist())) == 17
    assert int(idx.min()) >= 0 and int(idx.max()) < x.shape[0]
    assert torch.equal(idx, select_indices(method, x, 17, seed=3))


@pytest.mark.parametrize("method", METHODS)
def test_budget_at_least_n_returns_permutation(method):
    x = _feats(n=30)
    for budget in (30, 31, 1000):
        idx = select_indices(method, x, budget, seed=1)
        assert sorted(idx.tolist()) == list(range(30))


@pytest.mark.parametrize("method", METHODS)
def test_budget_one_and_single_candidate(method):
    assert select_indices(method, _feats(), 1).shape == (1,)
    assert select_indices(method, _feats(n=1), 5).tolist() == [0]


def test_random_differs_across_seeds():
    x = _feats(n=500)
    a, b = select_indices("random", x, 20, seed=0), select_indices("random", x, 20, seed=1)
    assert not torch.equal(a, b)


def test_greedy_picks_extremes_first_on_1d_grid():
    x = _grid(11)
    starts = set()
    for seed in range(30):
        picks = select_indices("greedy_entropy", x, 3, seed=seed).tolist()
        s = picks[0]
        starts.add(s)
        expected_second = 10 if s < 5 else 0  # s == 5: tie, lowest index wins
        assert picks[1] == expected_second
        assert abs(picks[1] - s) == max(s, 10 - s)  # the farthest end
    assert len(starts) > 1  # the start point really depends on the seed


def test_greedy_is_farthest_point_order():
    x = _feats(n=60, d=3)
    picks = select_indices("greedy_entropy", x, 10, seed=0).tolist()
    for t in range(1, 10):
        d = torch.cdist(x, x[picks[:t]]).min(dim=1).values
        d[picks[:t]] = -1.0
        assert picks[t] == int(torch.argmax(d))


def test_greedy_has_higher_entropy_than_random_on_clusters():
    g = torch.Generator().manual_seed(0)
    big = torch.randn(400, 2, generator=g) * 0.05
    small = torch.randn(12, 2, generator=g) * 0.05 + torch.tensor([10.0, 10.0])
    x = torch.cat([big, small])
    for seed in range(3):
        greedy = select_indices("greedy_entropy", x, 8, seed=seed)
        rand = select_indices("random", x, 8, seed=seed)
        assert (greedy >= 400).any()  # the small cluster is represented
        assert knn_entropy(x[greedy]) > knn_entropy(x[rand]) + 1.0


@pytest.mark.parametrize("method", ["greedy_entropy", "threshold_decay"])
def test_chunked_equals_unchunked(method):
    x = _feats(n=257, d=7)
    a = select_indices(method, x, 40, seed=2, chunk_size=7)
    b = select_indices(method, x, 40, seed=2, chunk_size=257)
    assert torch.equal(a, b)


def test_threshold_decay_first_picks_far_apart_on_grid():
    x = _grid(101)
    for seed in range(10):
        picks = select_indices("threshold_decay", x, 3, seed=seed, tau0=40.0, alpha=0.5, pass_size=101)
        p = x[picks]
        d = torch.cdist(p, p) + torch.eye(3) * 1e9
        # two picks at tau=40 (every grid point has an end >= 50 away), the third at tau >= 20
        assert (p[0] - p[1]).abs().item() > 40
        assert d.min().item() > 20


@pytest.mark.parametrize("pass_size", [7, 25, 80])
@pytest.mark.parametrize("decay_when", ["empty_pass", "every_pass"])
def test_threshold_decay_matches_reference(decay_when, pass_size):
    x = _feats(n=80, d=2, seed=4)
    seed = 5
    order = torch.randperm(80, generator=torch.Generator().manual_seed(seed))
    got = select_indices(
        "threshold_decay", x, 25, seed=seed, tau0=2.0, alpha=0.7, decay_when=decay_when, pass_size=pass_size
    )
    assert got.tolist() == _reference_threshold_decay(x, 25, order, 2.0, 0.7, decay_when, pass_size)


def test_threshold_decay_modes_differ_on_a_known_stream():
    # stream 0, 5 | 2, 2.2 | 10, 11 in passes of 2, tau0 = 3, alpha = 0.6, keep 3:
    # pass 1 adds 0 and 5 in both modes. every_pass: tau -> 1.8, so pass 2 adds 2 (2 from 0, 3
    # from 5). empty_pass: pass 2 is judged at tau = 3 and adds nothing (2 and 2.2 lie within 3 of
    # 0); only then tau -> 1.8, and pass 3 adds 10.
    x, _ = _in_stream_order([0.0, 5.0, 2.0, 2.2, 10.0, 11.0], seed=0)
    kw = dict(seed=0, tau0=3.0, alpha=0.6, pass_size=2)
    empty = select_indices("threshold_decay", x, 3, decay_when="empty_pass", **kw)
    every = select_indices("threshold_decay", x, 3, decay_when="every_pass", **kw)
    assert x[empty, 0].tolist() == [0.0, 5.0, 10.0]
    assert x[every, 0].tolist() == [0.0, 5.0, 2.0]


def test_threshold_decay_modes_differ_on_random_data_and_agree_with_one_pass_per_sweep():
    x = _feats(n=200, d=2, seed=6)
    # keep 100 of 200 (oversample 2) in passes of the budget (100), tau0 = median NN distance
    a = select_indices("threshold_decay", x, 100, seed=0, alpha=0.5)
    b = select_indices("threshold_decay", x, 100, seed=0, alpha=0.5, decay_when="every_pass")
    assert not torch.equal(a, b)
    # every_pass lowers tau sooner, so its kept set is packed tighter
    ma, mb = (torch.cdist(x[i], x[i]) + torch.eye(100) * 1e9 for i in (a, b))
    assert ma.min() > mb.min()
    # a pass over the whole stream: a candidate that failed keeps failing at the same tau, so the
    # pass after one that added something is empty and both modes keep the same points
    full = dict(seed=0, alpha=0.5, pass_size=200)
    assert torch.equal(
        select_indices("threshold_decay", x, 100, decay_when="empty_pass", **full),
        select_indices("threshold_decay", x, 100, decay_when="every_pass", **full),
    )
    assert not torch.equal(a, select_indices("threshold_decay", x, 100, seed=1, alpha=0.5))


def test_threshold_decay_duplicates_terminate():
    x = torch.zeros(50, 3)  # median NN distance 0 -> tau falls under the floor at once
    idx = select_indices("threshold_decay", x, 20, seed=0)
    assert len(set(idx.tolist())) == 20
    idx = select_indices("threshold_decay", x, 20, seed=0, tau0=1.0, alpha=0.5)
    assert len(set(idx.tolist())) == 20


def test_errors():
    x = _feats()
    with pytest.raises(ValueError, match="known: greedy_entropy, random, threshold_decay"):
        select_indices("kmeans", x, 3)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="budget"):
            select_indices("random", x, bad)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        select_indices("random", torch.zeros(5), 2)
    with pytest.raises(ValueError, match="N=0"):
        select_indices("random", torch.zeros(0, 3), 2)
    with pytest.raises(ValueError, match="unknown option"):
        select_indices("random", x, 3, chunk_size=4)
    with pytest.raises(ValueError, match="alpha"):
        select_indices("threshold_decay", x, 3, alpha=1.0)
    with pytest.raises(ValueError, match="decay_when"):
        select_indices("threshold_decay", x, 3, decay_when="sometimes")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="pass_size"):
            select_indices("threshold_decay", x, 3, pass_size=bad)
    with pytest.raises(ValueError, match="tau0"):
        select_indices("threshold_decay", x, 3, tau0=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        select_indices("greedy_entropy", x, 3, chunk_size=0)
