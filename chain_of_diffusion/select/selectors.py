"""Selecting ``budget`` of N candidate samples from their (N, D) features.

Methods (all seeded, all return distinct indices in selection order):

* ``random``: a uniform random subset.
* ``greedy_entropy``: farthest-point selection (Shi et al. 2025): from a random start, repeatedly
  add the candidate farthest from its nearest already-selected point.
* ``threshold_decay``: Threshold Decay Filter: passes over a seeded stream of the candidates add
  a candidate when it lies farther than ``tau`` from every selected point; ``tau`` shrinks by
  ``alpha`` after every pass or only after a pass that added nothing (``decay_when``).

Distances are Euclidean in float32 and compared squared. Both selectors keep each candidate's
squared distance to the picks it was last compared with (an upper bound: it only shrinks) and
compare candidates with many picks at once in one matmul (|q|^2 + |p|^2 - 2 q.p on mean-centred
features; near-zero values recomputed directly), only when a decision needs it. That is at most
the plain loop's N x budget x D work, at matmul speed rather than memory speed, with memory
O(N * D + chunk_size * PICK_CHUNK), never O(N * N). The result is the plain loop's up to float32
rounding of near-ties; chunking does not change it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..metrics.neighbors import knn_distances

# Below this threshold, threshold_decay stops filtering and takes the remaining candidates in order.
MIN_TAU = 1e-12
FLOAT32_MAX = float(torch.finfo(torch.float32).max)

# greedy_entropy: candidates kept up to date after every pick (the rest only at a sync). Larger:
# fewer syncs (each reads all N x D features) but more work per pick (GREEDY_SHORTLIST x D).
GREEDY_SHORTLIST = 2048
# threshold_decay: candidates of a pass judged together (one matmul against the picks they have
# not been compared with yet).
DECAY_BLOCK = 1024
# Columns (points compared against) per matmul in the distance computations: memory
# O(chunk_size * PICK_CHUNK).
PICK_CHUNK = 4096


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")


def _centered_float32(features: Tensor) -> tuple[Tensor, Tensor]:
    """(N, D) features as float32 centred at their mean, and their squared norms (N,).

    Distances do not change, but the norms in the expansion |q|^2 + |p|^2 - 2 q.p shrink, and
    with them its cancellation error (image features are often all positive, far from 0).
    """
    x = features.detach().to(torch.float32)
    x = x - x.double().mean(dim=0).to(torch.float32)
    return x, (x * x).sum(dim=1)


def _min_sq_dists(
    q: Tensor, q_sq: Tensor, p: Tensor, p_sq: Tensor, chunk_size: int, pick_chunk: int = PICK_CHUNK
) -> Tensor:
    """Squared distance from each row of q (n, D) to its nearest row of p (m, D), m >= 1.

    |q|^2 + min_j (|p_j|^2 - 2 q.p_j), clamped at 0: |q|^2 is the same for every p_j, so it is
    added once after the minimum. One matmul per ``chunk_size`` rows of q and ``pick_chunk`` rows
    of p; memory O(chunk_size * pick_chunk). q_sq (n,), p_sq (m,) -> (n,).
    """
    out = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
    for start in range(0, q.shape[0], chunk_size):
        rows = q[start : start + chunk_size]
        best = None
        for ps in range(0, p.shape[0], pick_chunk):
            block = torch.addmm(
                p_sq[ps : ps + pick_chunk].unsqueeze(0), rows, p[ps : ps + pick_chunk].T, alpha=-2.0
            )
            best = block.amin(dim=1) if best is None else torch.minimum(best, block.amin(dim=1))
        out[start : start + chunk_size] = best
    return _refine_near(out.add_(q_sq).clamp_(min=0.0), q, q_sq, p, p_sq)


def _sq_dists_to(q: Tensor, q_sq: Tensor, p: Tensor, p_sq: Tensor) -> Tensor:
    """Squared distances from each row of q (n, D) to one point p (D,), p_sq (1,) -> (n,): the
    expression of :func:`_min_sq_dists` for m = 1, as one matvec."""
    out = torch.addmv(p_sq, q, p, alpha=-2.0).add_(q_sq).clamp_(min=0.0)
    return _refine_near(out, q, q_sq, p.unsqueeze(0), p_sq)


# Squared distances below this fraction of |q|^2 + |p|^2 are within ~1/20 of this of the
# expansion's float32 error: they are recomputed directly, so that duplicates are exactly 0
# (ties, as the direct |x - c| gave) and near-duplicates are ordered by their true distance.
NEAR_REL = 2.0**-12


def _refine_near(out: Tensor, q: Tensor, q_sq: Tensor, p: Tensor, p_sq: Tensor) -> Tensor:
    """Recompute directly the entries of ``out`` (n,), min squared distances of q (n, D) to p
    (m, D), that the expansion cannot resolve (see :data:`NEAR_REL`); rarely any on real data.

    Only the pairs whose expansion lies within twice the tolerance of the row's minimum can hold
    the true minimum, so only those are recomputed (usually one per row: a duplicate's twin).
    """
    tol = (q_sq + p_sq.max()) * NEAR_REL
    near = (out < tol).nonzero().squeeze(1)
    if p.shape[0] == 1:  # one candidate pair per row: no need to find it
        out[near] = (q[near] - p).square().sum(dim=1)
        return out
    for start in range(0, near.shape[0], 1024):
        rows = near[start : start + 1024]
        qr, limit = q[rows], (out[rows] + 2.0 * tol[rows]).unsqueeze(1)
        exact = torch.full((rows.shape[0],), float("inf"), dtype=out.dtype, device=out.device)
        for ps in range(0, p.shape[0], PICK_CHUNK):
            pc = p[ps : ps + PICK_CHUNK]
            e = torch.addmm(p_sq[ps : ps + PICK_CHUNK].unsqueeze(0), qr, pc.T, alpha=-2.0).add_(
                q_sq[rows].unsqueeze(1)
            )
            i, j = (e <= limit).nonzero(as_tuple=True)
            exact.scatter_reduce_(0, i, (qr[i] - pc[j]).square().sum(dim=1), reduce="amin")
        out[rows] = exact
    return out


def select_random(features: Tensor, budget: int, seed: int = 0) -> Tensor:
    """A seeded uniform random subset of ``budget`` indices."""
    return torch.randperm(features.shape[0], generator=_generator(seed))[:budget]


def _farthest_point_order(
    features: Tensor, first: int, budget: int, chunk_size: int, shortlist: int = GREEDY_SHORTLIST
) -> list[int]:
    """Farthest-point order of (N, D) features from ``first``: ``budget`` indices (<= N), each the
    candidate whose squared distance to its nearest earlier pick is largest (ties: lowest index).

    Exact, with deferred updates. ``bound`` holds each live candidate's squared distance to the
    picks as of the last *sync*; distances to the picks only shrink, so it is an upper bound. A
    shortlist S, the ``shortlist`` largest bounds, is kept exact after every pick (|S| x D work).
    The best of S is the true argmax when it is strictly above every bound outside S; otherwise a
    sync brings all bounds up to date with the picks made since the last one (one matmul,
    N x picks x D, as much work as the plain loop but at matmul speed instead of memory speed),
    picks the global argmax and rebuilds S. Picked rows are compacted away once they are 1/8.
    """
    x, sq = _centered_float32(features)
    n = x.shape[0]
    budget = min(budget, n)
    alive = torch.arange(n, device=x.device)  # original index of each live row, ascending
    # a picked row gets |x|^2 = inf: its distances are inf, so it never needs refining and
    # minimum() keeps its bound at -inf, the mark of a picked row
    xa, sqa = x, sq.clone()
    bound = torch.full((n,), float("inf"), dtype=torch.float32, device=x.device)
    bound[first], sqa[first] = float("-inf"), float("inf")
    picks, pending, dead = [first], [first], 1
    s = _Shortlist.empty(x)
    while len(picks) < budget:
        j = s.best()
        if j >= 0:
            pick = s.take(j)
        else:  # sync
            idx = torch.tensor(pending, device=x.device)
            taken = s.taken_rows()
            bound[taken], sqa[taken] = float("-inf"), float("inf")
            torch.minimum(bound, _min_sq_dists(xa, sqa, x[idx], sq[idx], chunk_size), out=bound)
            pending = []
            if dead * 8 > xa.shape[0]:
                keep = bound > float("-inf")
                alive, xa, sqa, bound, dead = alive[keep], xa[keep], sqa[keep], bound[keep], 0
            row = int(torch.argmax(bound))
            bound[row], sqa[row] = float("-inf"), float("inf")
            pick = int(alive[row])
            s = _Shortlist.build(xa, sqa, bound, alive, shortlist)
        picks.append(pick)
        pending.append(pick)
        dead += 1
        if len(picks) < budget:
            s.update(x[pick], sq[pick : pick + 1])
    return picks


class _Shortlist:
    """The candidates with the largest bounds, kept exact after every pick (see
    :func:`_farthest_point_order`): their rows into the live arrays (ascending, so argmax ties go
    to the lowest index), original indices, features, |x|^2 and values; ``outside`` is the
    largest bound of the candidates not in it."""

    PRUNE_EVERY = 64  # picks between checks for members that can no longer be picked

    def __init__(self, rows: Tensor, orig: Tensor, x: Tensor, sq: Tensor, val: Tensor, outside: float):
        self.rows, self.row_list, self.orig = rows, rows.tolist(), orig.tolist()
        self.x, self.sq, self.val, self.outside = x, sq, val, outside
        self.taken: list[int] = []  # rows picked since the build
        self.since_prune = 0

    @classmethod
    def empty(cls, x: Tensor) -> _Shortlist:
        rows = torch.zeros(0, dtype=torch.long, device=x.device)
        return cls(rows, rows, x[rows], x[rows, 0], x[rows, 0], float("inf"))

    @classmethod
    def build(cls, xa: Tensor, sqa: Tensor, bound: Tensor, alive: Tensor, size: int) -> _Shortlist:
        """From the (n,) bounds of the live rows xa (n, D), sqa (n,); ``alive`` maps rows to indices."""
        if xa.shape[0] <= size:
            rows, outside = torch.arange(xa.shape[0], device=xa.device), float("-inf")
        else:
            top = torch.topk(bound, size + 1)
            rows, outside = top.indices[:size].sort().values, float(top.values[size])
        return cls(rows, alive[rows], xa[rows], sqa[rows], bound[rows], outside)

    def best(self) -> int:
        """Position of the next pick, or -1 when it may lie outside (a sync is due)."""
        if not self.orig:
            return -1
        j = int(torch.argmax(self.val))
        return j if float(self.val[j]) > self.outside else -1

    def take(self, j: int) -> int:
        self.val[j], self.sq[j] = float("-inf"), float("inf")
        self.taken.append(self.row_list[j])
        return self.orig[j]

    def taken_rows(self) -> Tensor:
        return torch.tensor(self.taken, dtype=torch.long, device=self.rows.device)

    def update(self, p: Tensor, p_sq: Tensor) -> None:
        """Lower the values by the squared distances to a new pick p (D,), p_sq (1,)."""
        torch.minimum(self.val, _sq_dists_to(self.x, self.sq, p, p_sq), out=self.val)
        self.since_prune += 1
        if self.since_prune >= self.PRUNE_EVERY:
            self.since_prune = 0
            # a member at or below ``outside`` cannot be picked before the next sync, and each
            # update reads every member's features: drop them once they are half
            keep = self.val > self.outside
            if 2 * int(keep.sum()) < keep.shape[0]:
                pos = keep.nonzero().squeeze(1)
                self.rows, self.x = self.rows[pos], self.x[pos]
                self.sq, self.val = self.sq[pos], self.val[pos]
                pos_list = pos.tolist()
                self.orig = [self.orig[i] for i in pos_list]
                self.row_list = [self.row_list[i] for i in pos_list]


def select_greedy_entropy(features: Tensor, budget: int, seed: int = 0, chunk_size: int = 8192) -> Tensor:
    """Farthest-point selection: start at a seeded random point, then repeatedly add the candidate
    whose distance to its nearest selected point is largest (ties: lowest index).

    Exact farthest-point order (up to float32 rounding of near-ties) at matmul speed: see
    :func:`_farthest_point_order`. Distances are compared squared, by the expansion
    |q|^2 + |p|^2 - 2 q.p on mean-centred features. Memory O(N * D + chunk_size * PICK_CHUNK).
    """
    _check_chunk_size(chunk_size)
    n = features.shape[0]
    first = int(torch.randint(n, (1,), generator=_generator(seed)).item())
    return torch.tensor(_farthest_point_order(features, first, budget, chunk_size), dtype=torch.long)


def _threshold_decay_order(
    features: Tensor,
    budget: int,
    order: Tensor,
    tau: float,
    alpha: float,
    decay_when: str,
    pass_size: int,
    chunk_size: int,
    block_size: int = DECAY_BLOCK,
    pick_chunk: int = PICK_CHUNK,
) -> list[int]:
    """The Threshold Decay Filter over the stream ``order`` (N,) of (N, D) features, starting at
    ``tau``: ``budget`` indices in selection order (semantics: :func:`select_threshold_decay`).

    Lazy updates: ``bound`` holds each candidate's squared distance to the first ``synced`` picks
    (an upper bound on the distance to all of them: it only shrinks). A pass is read in blocks
    of ``block_size``: a candidate whose bound is already <= tau^2 fails without more work; the
    others are compared with the picks made since (one matmul), then the block is walked in
    stream order, each accepted candidate lowering the distances of the block's later ones. A
    candidate is thus compared with each pick about once, and only when it is judged: about the
    plain loop's N x budget x D at most (it updated all N after every pick), usually much less.
    """
    x, sq = _centered_float32(features)
    n, dim = x.shape
    bound = torch.full((n,), float("inf"), dtype=torch.float32, device=x.device)
    synced = torch.zeros(n, dtype=torch.long, device=x.device)
    selected = torch.zeros(n, dtype=torch.bool, device=x.device)
    picks: list[int] = []
    picked_x = torch.empty(budget, dim, dtype=torch.float32, device=x.device)
    picked_sq = torch.empty(budget, dtype=torch.float32, device=x.device)
    state = _DecayState(x, sq, bound, synced, selected, picks, picked_x, picked_sq, chunk_size, pick_chunk)

    while len(picks) < budget:  # one sweep of the stream: the candidates not selected yet
        stream = order[~selected[order]]
        for start in range(0, stream.shape[0], pass_size):
            if tau < MIN_TAU:
                rest = order[~selected[order]]
                picks.extend(rest[: budget - len(picks)].tolist())
                break
            window = stream[start : start + pass_size]
            added = 0
            # tau^2 beyond float32 would be inf, failing even the first candidate (bound inf)
            tau_sq = min(tau * tau, FLOAT32_MAX)
            for b in range(0, window.shape[0], block_size):
                added += state.judge(window[b : b + block_size], tau_sq, budget - len(picks))
                if len(picks) >= budget:
                    break
            if len(picks) >= budget:
                break
            if decay_when == "every_pass" or added == 0:
                tau *= alpha
    return picks


class _DecayState:
    """What :func:`_threshold_decay_order` keeps between blocks: the (N, D) centred features x
    and |x|^2 (N,); per candidate its bound, how many picks it is synced with, and whether it is
    selected (N,); the picks in order and their features (budget, D) and |x|^2 (budget,)."""

    def __init__(self, x, sq, bound, synced, selected, picks, picked_x, picked_sq, chunk_size, pick_chunk):
        self.x, self.sq, self.bound, self.synced, self.selected = x, sq, bound, synced, selected
        self.picks, self.picked_x, self.picked_sq = picks, picked_x, picked_sq
        self.chunk_size, self.pick_chunk = chunk_size, pick_chunk

    def judge(self, block: Tensor, tau_sq: float, room: int) -> int:
        """Walk one block (b,) of the stream at threshold tau^2: add each candidate whose squared
        distance to every pick exceeds ``tau_sq``, at most ``room`` of them. Returns how many."""
        cand = block[self.bound[block] > tau_sq]  # a failed bound stays failed: it only shrinks
        if cand.numel() == 0:
            return 0
        cur = self.bound[cand]
        first, now = int(self.synced[cand].min()), len(self.picks)
        if first < now:  # picks some of them have not been compared with (a few twice: harmless)
            new = _min_sq_dists(
                self.x[cand],
                self.sq[cand],
                self.picked_x[first:now],
                self.picked_sq[first:now],
                self.chunk_size,
                self.pick_chunk,
            )
            cur = torch.minimum(cur, new)
            self.bound[cand], self.synced[cand] = cur, now
            keep = cur > tau_sq
            cand, cur = cand[keep], cur[keep]
        if cand.numel() == 0:
            return 0
        # the walk itself is sequential: on small numpy arrays, with the block's pairwise
        # distances computed once (one b x b matmul), it costs microseconds per candidate
        pair = _pair_sq_dists(self.x[cand], self.sq[cand]).cpu().numpy()
        cur_np = cur.cpu().numpy().copy()
        threshold = np.float32(tau_sq)  # compared in float32, as torch compares the bounds
        taken: list[int] = []
        pos = 0
        while pos < cur_np.shape[0] and len(taken) < room:
            ok = np.flatnonzero(cur_np[pos:] > threshold)
            if ok.size == 0:
                break
            p = pos + int(ok[0])
            taken.append(p)
            pos = p + 1
            np.minimum(cur_np[pos:], pair[p, pos:], out=cur_np[pos:])
        if taken:
            chosen = cand[torch.tensor(taken, device=cand.device)]
            now = len(self.picks)
            self.picked_x[now : now + len(taken)] = self.x[chosen]
            self.picked_sq[now : now + len(taken)] = self.sq[chosen]
            self.selected[chosen] = True
            self.picks.extend(chosen.tolist())
        return len(taken)


def _pair_sq_dists(x: Tensor, sq: Tensor) -> Tensor:
    """Squared distances (b, b) between the rows of x (b, D), |x|^2 (b,), by the expansion of
    :func:`_min_sq_dists`, near-zero ones recomputed directly (:data:`NEAR_REL`)."""
    d = torch.addmm(sq.unsqueeze(0), x, x.T, alpha=-2.0).add_(sq.unsqueeze(1)).clamp_(min=0.0)
    d.fill_diagonal_(float("inf"))
    i, j = (d < (sq.unsqueeze(1) + sq.unsqueeze(0)) * NEAR_REL).nonzero(as_tuple=True)
    if i.numel():
        d[i, j] = (x[i] - x[j]).square().sum(dim=1)
    return d


def select_threshold_decay(
    features: Tensor,
    budget: int,
    seed: int = 0,
    tau0: float | None = None,
    alpha: float = 0.9,
    decay_when: str = "empty_pass",
    pass_size: int | None = None,
    chunk_size: int = 8192,
) -> Tensor:
    """Threshold Decay Filter (Shi et al. 2025, arXiv 2509.16499).

    The candidates form a stream: one seeded random order (fixed for the call), read in passes of
    ``pass_size`` candidates, like the batches an online filter sees as a generator produces them.
    Within a pass each candidate is added when its distance to every selected point exceeds
    ``tau`` (the very first candidate is always added); selection stops as soon as ``budget``
    points are chosen. When the stream's end is reached it starts again over the candidates not
    selected yet. After a pass, ``tau <- alpha * tau``:

    * ``decay_when="empty_pass"`` (the paper's text): only after a pass that added nothing, so
      every pass of fresh candidates is first judged at the threshold the earlier ones met;
    * ``decay_when="every_pass"`` (its released code): after every pass, so ``tau`` falls as the
      stream is read and later candidates face a smaller threshold.

    The two differ only when a pass is shorter than what is left of the stream: a candidate that
    fails once keeps failing at the same ``tau`` (distances to the selected set only shrink), so
    with ``pass_size`` >= N a pass after one that added something adds nothing and both modes
    select the same points. Once ``tau`` falls below :data:`MIN_TAU` the remaining candidates are
    taken in stream order.

    Args:
        features: (N, D) candidate features.
        budget: how many to keep, 1 <= budget <= N.
        tau0: starting threshold; None: the median nearest-neighbour distance of the candidates.
        alpha: decay factor, 0 < alpha < 1.
        decay_when: ``"empty_pass"`` or ``"every_pass"``.
        pass_size: candidates per pass, >= 1; None: ``budget`` (N kept of 2N candidates: two
            passes per sweep of the stream).
        chunk_size: rows per chunk in the distance computations.

    Returns:
        (budget,) int64 indices in selection order.
    """
    _check_chunk_size(chunk_size)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if decay_when not in ("empty_pass", "every_pass"):
        raise ValueError(f"decay_when must be 'empty_pass' or 'every_pass', got {decay_when!r}")
    if pass_size is None:
        pass_size = budget
    if isinstance(pass_size, bool) or not isinstance(pass_size, int) or pass_size < 1:
        raise ValueError(f"pass_size must be an int >= 1 or None, got {pass_size!r}")
    x = features.detach().to(torch.float32)
    n = x.shape[0]
    if tau0 is None:
        if n < 2:
            tau = 0.0
        else:
            nn = knn_distances(x, x, k=1, chunk_size=min(chunk_size, 2048), exclude_self=True)[:, 0]
            tau = float(nn.median())
    else:
        tau = float(tau0)
        if not tau > 0.0 or tau == float("inf"):
            raise ValueError(f"tau0 must be a finite number > 0, got {tau0}")

    order = torch.randperm(n, generator=_generator(seed)).to(x.device)
    picks = _threshold_decay_order(x, budget, order, tau, alpha, decay_when, pass_size, chunk_size)
    return torch.tensor(picks, dtype=torch.long)


SELECTORS: dict[str, Callable[..., Tensor]] = {
    "random": select_random,
    "greedy_entropy": select_greedy_entropy,
    "threshold_decay": select_threshold_decay,
}


def select_indices(method: str, features: Tensor, budget: int, seed: int = 0, **options) -> torch.LongTensor:
    """Indices of ``budget`` distinct candidates chosen by ``method``, in selection order.

    Args:
        method: one of :data:`SELECTORS` (``random``, ``greedy_entropy``, ``threshold_decay``).
        features: (N, D) candidate features, N >= 1.
        budget: how many to keep, >= 1; when budget >= N all N come back (a permutation, in the
            method's selection order).
        seed: seeds every random choice of the method.
        **options: the method's own keyword options (see its function).

    Returns:
        (min(budget, N),) int64 CPU tensor.
    """
    if method not in SELECTORS:
        raise ValueError(f"unknown selection method {method!r}; known: {', '.join(sorted(SELECTORS))}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be an int >= 1, got {budget!r}")
    if not isinstance(features, Tensor) or features.ndim != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be an (N, D) tensor, got {shape}")
    if features.shape[0] < 1:
        raise ValueError("features must hold at least 1 candidate, got N=0")
    fn = SELECTORS[method]
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("features", "budget", "seed")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for selection method {method!r}; "
            f"accepted: {allowed if allowed else 'none'}"
        )
    idx = fn(features, min(budget, features.shape[0]), seed=seed, **options)
    return idx.to(device="cpu", dtype=torch.long)
