"""Nearest-neighbour distances and the memorization / generalization metrics built on them (no I/O).

Distances are Euclidean, in whatever feature space the caller passes (pixels, classifier features).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_pair(queries: Tensor, refs: Tensor) -> None:
    if queries.ndim != 2 or refs.ndim != 2:
        raise ValueError(
            f"queries and refs must be (N, D) and (M, D), got {tuple(queries.shape)} and {tuple(refs.shape)}"
        )
    if queries.shape[1] != refs.shape[1]:
        raise ValueError(f"feature dims differ: queries D={queries.shape[1]}, refs D={refs.shape[1]}")


def _sq_dists_fast(q: Tensor, r: Tensor, r_sq: Tensor) -> Tensor:
    """Squared distances by |q|^2 + |r|^2 - 2 q.r (one matmul); (n, D), (M, D), (M,) -> (n, M).

    Cancellation makes this inexact for near neighbours, so it is used only to *rank* them.
    """
    q_sq = (q * q).sum(dim=1, keepdim=True)
    return (q_sq + r_sq.unsqueeze(0) - 2.0 * (q @ r.T)).clamp_(min=0.0)


def _centered(queries: Tensor, refs: Tensor) -> tuple[Tensor, Tensor]:
    """Both sets (N, D), (M, D) shifted by the refs' mean, in float32.

    Distances do not change, but |q|^2 and |r|^2 shrink, and with them the cancellation error of
    the fast expansion: features such as Inception's are all positive, far from the origin.
    """
    r = refs.to(torch.float32)
    mean = r.double().mean(dim=0).to(torch.float32)
    return queries.to(torch.float32) - mean, r - mean


def _augmented(x: Tensor) -> tuple[Tensor, Tensor]:
    """(N, D) -> left (N, D + 2) = [x, |x|^2, 1] and right (N, D + 2) = [-2 x, 1, |x|^2], so that
    ``left[i] @ right[j]`` is |x_i|^2 + |x_j|^2 - 2 x_i.x_j: one matmul gives squared distances
    with no separate passes to add the norms (each pass over a block costs ~10% of its matmul)."""
    sq = (x * x).sum(dim=1, keepdim=True)
    one = torch.ones_like(sq)
    return torch.cat([x, sq, one], dim=1), torch.cat([-2.0 * x, one, sq], dim=1)


def _block_sq_dists(left: Tensor, right: Tensor, buf: Tensor) -> Tensor:
    """Squared distances (a, b) of augmented rows (a, D + 2), (b, D + 2) by the fast expansion,
    unclamped (ranking is the same), written into the flat buffer ``buf`` (>= a * b floats):
    reusing it saves a fresh allocation, and its page faults, per block."""
    out = buf[: left.shape[0] * right.shape[0]].view(left.shape[0], right.shape[0])
    return torch.mm(left, right.T, out=out)


def _smallest(d: Tensor, k: int, dim: int) -> tuple[Tensor, Tensor]:
    """The k smallest entries of d (a, b) along ``dim`` and their positions, as (rows, k) with
    rows the other dimension; k is capped at the size along ``dim``."""
    v, i = d.topk(min(k, d.shape[dim]), dim=dim, largest=False)
    return (v, i) if dim == 1 else (v.T, i.T)


def _merge_smallest(best_v: Tensor, best_i: Tensor, v: Tensor, i: Tensor) -> None:
    """Fold candidates v, i (n, j) into the running k smallest best_v, best_i (n, k), in place."""
    all_v, all_i = torch.cat([best_v, v], dim=1), torch.cat([best_i, i], dim=1)
    top_v, pos = all_v.topk(best_v.shape[1], dim=1, largest=False)
    best_v.copy_(top_v)
    best_i.copy_(all_i.gather(1, pos))


# _nearest_symmetric: each row's best is located to a run of this many rows or columns of its
# winning block, so the final pass that finds the index is SUB_BLOCK / N of the main work.
SUB_BLOCK = 256


def _sub_minima(d: Tensor, sub: int, dim: int) -> Tensor:
    """Minima of d (a, b) over consecutive runs of ``sub`` entries along ``dim`` (the last run
    may be shorter): (a, ceil(b / sub)) for dim=1, (ceil(a / sub), b) for dim=0."""
    size = d.shape[dim]
    full = size - size % sub
    parts = []
    if full:
        if dim == 1:
            parts.append(d[:, :full].view(d.shape[0], full // sub, sub).amin(dim=2))
        else:
            parts.append(d[:full].view(full // sub, sub, d.shape[1]).amin(dim=1))
    if full < size:
        parts.append(d.narrow(dim, full, size - full).amin(dim=dim, keepdim=True))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _upper_blocks(left: Tensor, right: Tensor, block: int, buf: Tensor, exclude_self: bool):
    """Yields (rows_i, rows_j, d) for every block pair j >= i of the (N, N) squared-distance matrix
    of a set against itself: d is the (|i|, |j|) block (a view of ``buf``, valid until the next
    pair), with the self-distances on the diagonal blocks set to inf when ``exclude_self``."""
    n = left.shape[0]
    for si in range(0, n, block):
        rows_i = slice(si, min(si + block, n))
        for sj in range(si, n, block):
            rows_j = slice(sj, min(sj + block, n))
            d = _block_sq_dists(left[rows_i], right[rows_j], buf)
            if sj == si and exclude_self:
                d.fill_diagonal_(float("inf"))
            yield rows_i, rows_j, d


def _nearest_symmetric(x: Tensor, block: int, exclude_self: bool) -> Tensor:
    """Index (N, 1) of the nearest row of x (N, D) to each row (k = 1), by the fast expansion.

    Per block pair only values are reduced (``amin``, several times faster than ``min`` with
    indices, most of all along dim 0), keeping for each row where its best lies: a run of
    :data:`SUB_BLOCK` columns. One more pass against that run alone then finds the index.
    """
    n = x.shape[0]
    sub = min(SUB_BLOCK, block)
    left, right = _augmented(x)
    buf = torch.empty(min(block, n) ** 2, dtype=torch.float32, device=x.device)
    best_v = torch.full((n,), float("inf"), dtype=torch.float32, device=x.device)
    best_at = torch.zeros(n, dtype=torch.long, device=x.device)  # first column of the winning run

    def fold(rows: slice, minima: Tensor, first: int) -> None:
        v, run = minima.min(dim=1)  # (rows, runs): small
        better = v < best_v[rows]  # strict: ties stay with the earlier block
        best_v[rows] = torch.where(better, v, best_v[rows])
        best_at[rows] = torch.where(better, first + run * sub, best_at[rows])

    for rows_i, rows_j, d in _upper_blocks(left, right, block, buf, exclude_self):
        fold(rows_i, _sub_minima(d, sub, dim=1), rows_j.start)
        if rows_j != rows_i:
            fold(rows_j, _sub_minima(d, sub, dim=0).T, rows_i.start)
    out = torch.empty(n, 1, dtype=torch.long, device=x.device)
    order = torch.argsort(best_at, stable=True)
    starts, counts = torch.unique_consecutive(best_at[order], return_counts=True)
    pos = 0
    for first, count in zip(starts.tolist(), counts.tolist()):
        last = min(first + sub, (first // block + 1) * block, n)  # a run never crosses a block
        for part in range(pos, pos + count, block):
            rows = order[part : min(part + block, pos + count)]
            d = _block_sq_dists(left[rows], right[first:last], buf)
            if exclude_self:
                own = ((rows >= first) & (rows < last)).nonzero().squeeze(1)
                d[own, rows[own] - first] = float("inf")
            out[rows, 0] = d.argmin(dim=1) + first
        pos += count
    return out


def _knn_indices_symmetric(x: Tensor, k: int, block: int, exclude_self: bool) -> Tensor:
    """Indices (N, k) of the k nearest rows of x (N, D) to each row, ranked by the fast expansion.

    The distance matrix is symmetric, so each block pair (i, j >= i) is computed once and ranked
    both ways: along its rows for block i and along its columns for block j. That halves the
    matmul work of the plain path, which is most of the time (N^2 D flops).
    """
    if k == 1:
        return _nearest_symmetric(x, block, exclude_self)
    n = x.shape[0]
    left, right = _augmented(x)
    buf = torch.empty(min(block, n) ** 2, dtype=torch.float32, device=x.device)
    best_v = torch.full((n, k), float("inf"), dtype=torch.float32, device=x.device)
    best_i = torch.zeros((n, k), dtype=torch.long, device=x.device)
    for rows_i, rows_j, d in _upper_blocks(left, right, block, buf, exclude_self):
        v, i = _smallest(d, k, dim=1)
        _merge_smallest(best_v[rows_i], best_i[rows_i], v, i + rows_j.start)
        if rows_j != rows_i:
            v, i = _smallest(d, k, dim=0)
            _merge_smallest(best_v[rows_j], best_i[rows_j], v, i + rows_i.start)
    return best_i


def _knn_indices_plain(q_all: Tensor, r: Tensor, k: int, chunk_size: int, exclude_self: bool) -> Tensor:
    """Indices (N, k) of the k nearest rows of r (M, D) to each row of q_all (N, D), ranked by the
    fast expansion, chunk by chunk over the queries (memory O(chunk_size * M))."""
    r_sq = (r * r).sum(dim=1)
    out = torch.empty(q_all.shape[0], k, dtype=torch.long, device=q_all.device)
    for start in range(0, q_all.shape[0], chunk_size):
        q = q_all[start : start + chunk_size]
        sq = _sq_dists_fast(q, r, r_sq)
        if exclude_self:
            rows = torch.arange(q.shape[0], device=q.device)
            sq[rows, rows + start] = float("inf")
        out[start : start + q.shape[0]] = sq.topk(k, dim=1, largest=False).indices
    return out


def _exact_sorted(q_all: Tensor, r: Tensor, idx: Tensor, chunk_size: int) -> Tensor:
    """Direct distances |q - r[idx]| of (N, D) queries to their (N, k) chosen refs, ascending per
    row; an exact duplicate gives exactly 0, which the expansion does not guarantee."""
    out = torch.empty(idx.shape, dtype=torch.float32, device=q_all.device)
    for start in range(0, q_all.shape[0], chunk_size):
        q = q_all[start : start + chunk_size]
        exact = (q.unsqueeze(1) - r[idx[start : start + q.shape[0]]]).norm(dim=2)  # (n, k, D) -> (n, k)
        out[start : start + q.shape[0]] = exact.sort(dim=1).values
    return out


def knn_distances(
    queries: Tensor,
    refs: Tensor,
    k: int,
    chunk_size: int = 2048,
    exclude_self: bool = False,
    symmetric: bool | None = None,
) -> Tensor:
    """Distances from each query to its k nearest references, ascending.

    Candidates are ranked with the fast matmul expansion in float32 (on features centred at the
    refs' mean) and their distances are then recomputed directly, so an exact duplicate has
    distance exactly 0. When the queries are the refs, each pair is computed once (the symmetric
    path, half the matmul work); otherwise the search goes chunk by chunk over the queries, so
    memory is O(chunk_size * M), never O(N * M).

    Args:
        queries: (N, D).
        refs: (M, D), on any device (moved to the queries' device).
        k: neighbours per query; needs k <= M (k <= M - 1 with ``exclude_self``).
        chunk_size: queries per chunk (the symmetric path: rows and columns per block, memory
            O(chunk_size^2 + N k)).
        exclude_self: ``queries`` *is* ``refs`` (same rows, same order): reference i is skipped for
            query i. Done by index, not by value, so other identical rows still count (at distance 0).
        symmetric: force (True) or forbid (False) the symmetric path; None: use it when
            ``exclude_self`` is set or ``refs`` is ``queries``, and N > chunk_size. Both paths
            give the same result up to near-ties in the ranking (float32 rounding).

    Returns:
        (N, k) float32 distances on the queries' device.
    """
    _check_pair(queries, refs)
    if exclude_self and queries.shape[0] != refs.shape[0]:
        raise ValueError("exclude_self needs queries to be refs (same number of rows)")
    available = refs.shape[0] - int(exclude_self)
    if not 1 <= k <= available:
        raise ValueError(f"k={k} needs 1 <= k <= {available} reference points")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if symmetric is None:  # one block holds everything: nothing to halve
        symmetric = (exclude_self or refs is queries) and queries.shape[0] > chunk_size
    if symmetric and queries.shape[0] != refs.shape[0]:
        raise ValueError("symmetric needs queries to be refs (same number of rows)")

    device = queries.device
    q_all = queries.detach().to(dtype=torch.float32)
    r = refs.detach().to(device=device, dtype=torch.float32)
    if symmetric:
        xc, _ = _centered(q_all, q_all)
        idx = _knn_indices_symmetric(xc, k, chunk_size, exclude_self)
        return _exact_sorted(q_all, q_all, idx, chunk_size)
    qc, rc = _centered(q_all, r)
    idx = _knn_indices_plain(qc, rc, k, chunk_size, exclude_self)
    return _exact_sorted(q_all, r, idx, chunk_size)


def memorization_ratio(samples: Tensor, train: Tensor, ratio: float = 1.0 / 3.0) -> float:
    """Share of samples that sit much closer to one training point than to any other.

    A sample x is memorized when d(x, NN1) / d(x, NN2) < ratio, NN1 and NN2 its two nearest
    training points (the criterion of Yoon et al. 2023 / Shi et al. 2025). A sample identical to a
    training image has d1 = 0 and counts; when d2 is 0 as well (a duplicated training image) the
    0/0 case also counts as memorized.

    Args:
        samples: (N, D) generated features; train: (M, D) training features, M >= 2.

    Returns:
        A fraction in [0, 1].
    """
    if samples.shape[0] == 0:
        raise ValueError("memorization_ratio needs at least 1 sample, got 0")
    d = knn_distances(samples, train, k=2).double()
    d1, d2 = d[:, 0], d[:, 1]
    memorized = torch.where(d2 > 0, d1 / d2.clamp(min=torch.finfo(torch.float64).tiny) < ratio, True)
    return float(memorized.double().mean())


def generalization_score(samples: Tensor, train: Tensor) -> float:
    """Mean distance from each sample to its nearest training point (larger: farther from the
    training set, i.e. less copying).

    Args:
        samples: (N, D); train: (M, D).
    """
    if samples.shape[0] == 0:
        raise ValueError("generalization_score needs at least 1 sample, got 0")
    return float(knn_distances(samples, train, k=1)[:, 0].double().mean())
