"""Selecting ``budget`` of N candidate samples from their (N, D) features.

Methods (all seeded, all return distinct indices in selection order):

* ``random``: a uniform random subset.
* ``greedy_entropy``: farthest-point selection (Shi et al. 2025): from a random start, repeatedly
  add the candidate farthest from its nearest already-selected point.
* ``threshold_decay``: Threshold Decay Filter: passes over a seeded stream of the candidates add
  a candidate when it lies farther than ``tau`` from every selected point; ``tau`` shrinks by
  ``alpha`` after every pass or only after a pass that added nothing (``decay_when``).

Distances are Euclidean in float32, computed directly (``|x - c|``) chunk by chunk, so memory is
O(chunk_size * D + N), never O(N * N), and a chunked run gives exactly the unchunked result.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from ..metrics.neighbors import knn_distances

# Below this threshold, threshold_decay stops filtering and takes the remaining candidates in order.
MIN_TAU = 1e-12


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _dists_to(points: Tensor, x: Tensor, chunk_size: int) -> Tensor:
    """Distances from every row of ``points`` (N, D) to the single point ``x`` (D,), chunked."""
    out = torch.empty(points.shape[0], dtype=points.dtype, device=points.device)
    for start in range(0, points.shape[0], chunk_size):
        out[start : start + chunk_size] = (points[start : start + chunk_size] - x).norm(dim=1)
    return out


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")


def select_random(features: Tensor, budget: int, seed: int = 0) -> Tensor:
    """A seeded uniform random subset of ``budget`` indices."""
    return torch.randperm(features.shape[0], generator=_generator(seed))[:budget]


def select_greedy_entropy(features: Tensor, budget: int, seed: int = 0, chunk_size: int = 8192) -> Tensor:
    """Farthest-point selection: start at a seeded random point, then repeatedly add the candidate
    whose distance to its nearest selected point is largest (ties: lowest index).

    Keeps the (N,) vector of distances to the nearest selected point and updates it with the
    distances to each newly added point, so each pick costs O(N * D).
    """
    _check_chunk_size(chunk_size)
    x = features.detach().to(torch.float32)
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=_generator(seed)).item())
    picks = [first]
    min_dist = _dists_to(x, x[first], chunk_size)
    min_dist[first] = -1.0  # selected points are never picked again
    for _ in range(budget - 1):
        nxt = int(torch.argmax(min_dist).item())
        picks.append(nxt)
        torch.minimum(min_dist, _dists_to(x, x[nxt], chunk_size), out=min_dist)
        min_dist[nxt] = -1.0
    return torch.tensor(picks, dtype=torch.long)


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
    # Distance of each candidate to its nearest selected point (inf before any pick); a selected
    # point has distance 0 to itself, so ``min_dist > tau`` (tau > 0) never re-picks it.
    min_dist = torch.full((n,), float("inf"), dtype=torch.float32, device=x.device)
    selected = torch.zeros(n, dtype=torch.bool, device=x.device)
    picks: list[int] = []

    while len(picks) < budget:  # one sweep of the stream: the candidates not selected yet
        stream = order[~selected[order]]
        for start in range(0, stream.shape[0], pass_size):
            if tau < MIN_TAU:
                rest = order[~selected[order]]
                picks.extend(rest[: budget - len(picks)].tolist())
                break
            window = stream[start : start + pass_size]
            pos, added = 0, 0
            while pos < window.shape[0] and len(picks) < budget:
                ok = min_dist[window[pos:]] > tau
                if not bool(ok.any()):
                    break
                p = pos + int(torch.argmax(ok.to(torch.int8)).item())
                idx = int(window[p].item())
                picks.append(idx)
                selected[idx] = True
                added += 1
                torch.minimum(min_dist, _dists_to(x, x[idx], chunk_size), out=min_dist)
                min_dist[idx] = 0.0
                pos = p + 1
            if len(picks) >= budget:
                break
            if decay_when == "every_pass" or added == 0:
                tau *= alpha
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
