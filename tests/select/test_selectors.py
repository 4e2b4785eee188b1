import numpy as np
import pytest
import torch

from chain_of_diffusion.metrics import knn_entropy
from chain_of_diffusion.select import SELECTORS, select_indices
from chain_of_diffusion.select import selectors as sel

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


def _reference_threshold_decay_taus(x, budget, order, tau, alpha, decay_when, pass_size):
    """The same loop on a float64 distance matrix, fast enough for a few hundred points; also
    returns the tau at which each pick was added (the floor case: tau < MIN_TAU takes the rest)."""
    d = torch.cdist(x.double(), x.double()).numpy()
    picks, taus, selected = [], [], np.zeros(x.shape[0], dtype=bool)
    while len(picks) < budget:
        stream = [i for i in order.tolist() if not selected[i]]
        for start in range(0, len(stream), pass_size):
            if tau < sel.MIN_TAU:
                rest = [i for i in order.tolist() if not selected[i]][: budget - len(picks)]
                return picks + rest, taus + [0.0] * len(rest)
            added = 0
            for i in stream[start : start + pass_size]:
                if not picks or d[i, picks].min() > tau:
                    picks.append(i)
                    taus.append(tau)
                    selected[i] = True
                    added += 1
                    if len(picks) == budget:
                        return picks, taus
            if decay_when == "every_pass" or added == 0:
                tau *= alpha
    return picks, taus


def _brute_force_farthest(x, first, budget):
    """Farthest-point order in float64 from ``first``, one full distance row per pick."""
    x = x.double()
    d = (x - x[first]).norm(dim=1)
    d[first] = -1.0
    picks = [first]
    for _ in range(budget - 1):
        nxt = int(torch.argmax(d))  # first maximum: ties go to the lowest index
        picks.append(nxt)
        d = torch.minimum(d, (x - x[nxt]).norm(dim=1))
        d[picks] = -1.0
    return picks


def _min_pairwise(p):
    return (torch.cdist(p, p) + torch.eye(p.shape[0]) * 1e9).min().item()


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


@pytest.mark.parametrize(
    "n, d, budget, chunk_size, shortlist",
    [
        (300, 5, 120, 7, 4),  # tiny shortlist: a sync every few picks
        (120, 5, 119, 64, 1),  # shortlist of one: both paths alternate, to the last candidate
        (500, 16, 200, 100, 32),
        (800, 3, 400, 10_000, 64),  # one chunk; many picked: compaction of the live rows
        (200, 2, 200, 13, 1000),  # shortlist >= N: never a second sync
    ],
)
def test_greedy_equals_brute_force(n, d, budget, chunk_size, shortlist):
    for seed in range(3):
        x = _feats(n=n, d=d, seed=seed)
        first = (17 * seed) % n
        got = sel._farthest_point_order(x, first, budget, chunk_size, shortlist)
        assert got == _brute_force_farthest(x, first, budget)


def test_greedy_uses_both_shortlist_and_sync(monkeypatch):
    calls = []
    real = sel._min_sq_dists

    def counting(q, q_sq, p, p_sq, chunk_size):
        calls.append(q.shape[0])
        return real(q, q_sq, p, p_sq, chunk_size)

    monkeypatch.setattr(sel, "_min_sq_dists", counting)
    x = _feats(n=400, d=6, seed=7)
    got = sel._farthest_point_order(x, 0, 150, 50, 16)
    assert got == _brute_force_farthest(x, 0, 150)
    syncs = sum(rows > 16 for rows in calls)  # a sync reads every live row; the shortlist 16
    assert 3 <= syncs <= 100  # most picks come from the shortlist, and there are several syncs


@pytest.mark.parametrize("shortlist", [8, 64])
def test_greedy_shortlist_pruned_after_every_pick_equals_brute_force(monkeypatch, shortlist):
    monkeypatch.setattr(sel._Shortlist, "PRUNE_EVERY", 1)
    x = _feats(n=400, d=4, seed=11)
    assert sel._farthest_point_order(x, 5, 200, 64, shortlist) == _brute_force_farthest(x, 5, 200)


def test_greedy_ties_go_to_the_lowest_index_on_a_2d_grid():
    # integer grid centred at 3: every squared distance is exact in float32, so ties are real
    g = torch.arange(7, dtype=torch.float32)
    x = torch.cartesian_prod(g, g)
    for first in (0, 10, 24, 48):
        for shortlist in (1, 3, 100):
            got = sel._farthest_point_order(x, first, 30, 5, shortlist)
            assert got == _brute_force_farthest(x, first, 30)


def test_greedy_duplicates_are_ties_at_zero():
    # 3 copies of 40 points, plus a constant offset like all-positive image features: once the 40
    # are picked every candidate is at exactly 0 and the rest come in index order
    base = _feats(n=40, d=6, seed=5) + 50.0
    x = torch.cat([base, base, base])
    for shortlist in (2, 1000):
        got = sel._farthest_point_order(x, 3, 120, 16, shortlist)
        assert got == _brute_force_farthest(x, 3, 120)
        assert sorted(got[:40]) != got[:40] and got[40:] == sorted(got[40:])


def test_greedy_public_matches_brute_force_from_the_seeded_start():
    x = _feats(n=700, d=8, seed=3)
    for seed in range(3):
        got = select_indices("greedy_entropy", x, 90, seed=seed, chunk_size=100).tolist()
        assert got == _brute_force_farthest(x, got[0], 90)


def test_greedy_spreads_more_than_random():
    for seed in range(4):
        x = _feats(n=1000, d=4, seed=seed)
        greedy = select_indices("greedy_entropy", x, 50, seed=seed)
        rand = select_indices("random", x, 50, seed=seed)
        assert _min_pairwise(x[greedy]) >= _min_pairwise(x[rand])


@pytest.mark.parametrize("m", [1, 7, 40])
def test_min_sq_dists_duplicates_exact_and_near_duplicates_accurate(m):
    gen = torch.Generator().manual_seed(12)
    p = torch.randn(m, 16, generator=gen) + 100.0  # far from 0: the expansion alone cancels badly
    q = torch.randn(60, 16, generator=gen) + 100.0
    q[:10] = p[torch.arange(10) % m]  # duplicates
    q[10:20] = p[torch.arange(10) % m] + 1e-3 * torch.randn(10, 16, generator=gen)  # near-duplicates
    mean = torch.cat([p, q]).mean(dim=0)
    qc, pc = q - mean, p - mean
    got = sel._min_sq_dists(qc, (qc * qc).sum(dim=1), pc, (pc * pc).sum(dim=1), chunk_size=16, pick_chunk=3)
    want = torch.cdist(qc.double(), pc.double()).min(dim=1).values.square()
    assert (got[:10] == 0).all()
    torch.testing.assert_close(got[10:].double(), want[10:], rtol=1e-3, atol=0)
    one = sel._sq_dists_to(qc, (qc * qc).sum(dim=1), pc[0], (pc[:1] * pc[:1]).sum(dim=1))
    torch.testing.assert_close(
        one.double(), torch.cdist(qc.double(), pc[:1].double())[:, 0].square(), rtol=1e-3, atol=0
    )


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


@pytest.mark.parametrize("decay_when", ["empty_pass", "every_pass"])
@pytest.mark.parametrize(
    "pass_size, block_size, pick_chunk",
    [(7, 3, 2), (7, 1000, 1), (50, 8, 5), (50, 64, 1000), (300, 1, 3), (300, 37, 16), (1000, 256, 64)],
)
def test_threshold_decay_blocks_equal_reference(decay_when, pass_size, block_size, pick_chunk):
    x = _feats(n=300, d=3, seed=8)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(1))
    budget, tau0, alpha = 150, 1.2, 0.8
    got = sel._threshold_decay_order(
        x,
        budget,
        order,
        tau0,
        alpha,
        decay_when,
        pass_size,
        chunk_size=40,
        block_size=block_size,
        pick_chunk=pick_chunk,
    )
    want, taus = _reference_threshold_decay_taus(x, budget, order, tau0, alpha, decay_when, pass_size)
    assert got == want
    # it stops at the budget and every kept pair is farther apart than the tau of the later pick
    assert len(got) == budget == len(set(got))
    d = torch.cdist(x[got].double(), x[got].double())
    for t in range(1, budget):
        assert d[t, :t].min() > taus[t]


def test_threshold_decay_duplicates_equal_reference():
    base = _feats(n=30, d=3, seed=6) + 20.0
    x = torch.cat([base, base])
    order = torch.randperm(60, generator=torch.Generator().manual_seed(2))
    for block_size, pick_chunk in ((4, 3), (64, 1000)):
        got = sel._threshold_decay_order(x, 50, order, 1.0, 0.5, "empty_pass", 20, 8, block_size, pick_chunk)
        want, taus = _reference_threshold_decay_taus(x, 50, order, 1.0, 0.5, "empty_pass", 20)
        assert got == want
        assert taus[-1] == 0.0  # the copies only come in once tau has fallen under MIN_TAU


def test_threshold_decay_default_tau0_equals_reference():
    x = _feats(n=400, d=6, seed=9)
    nn = torch.cdist(x.double(), x.double()).fill_diagonal_(float("inf")).min(dim=1).values
    tau0 = float(nn.float().median())
    order = torch.randperm(400, generator=torch.Generator().manual_seed(4))
    for decay_when in ("empty_pass", "every_pass"):
        got = select_indices("threshold_decay", x, 200, seed=4, decay_when=decay_when, pass_size=60)
        want, _ = _reference_threshold_decay_taus(x, 200, order, tau0, 0.9, decay_when, 60)
        assert got.tolist() == want


def test_threshold_decay_huge_tau0_still_takes_the_first_candidate():
    x = _feats(n=60, d=3, seed=13)
    order = torch.randperm(60, generator=torch.Generator().manual_seed(3))
    got = select_indices("threshold_decay", x, 10, seed=3, tau0=1e30, alpha=0.01, pass_size=20)
    want, _ = _reference_threshold_decay_taus(x, 10, order, 1e30, 0.01, "empty_pass", 20)
    assert got.tolist() == want and want[0] == int(order[0])


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
