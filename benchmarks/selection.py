"""Speed of candidate selection and of the entropy estimate at the paper's scale: greedy_entropy
(farthest-point) keeping 25,000 of 50,000 candidates with 384-d features, threshold_decay on the
same candidates, and knn_entropy of the 50,000, each against the straightforward implementation
this package used before, run in the same process.

    python benchmarks/selection.py                       # 50,000 x 384; references on a part, scaled
    python benchmarks/selection.py --full-reference      # the references in full too (~25 min here)
    python benchmarks/selection.py --n 10000 --budget 5000 --data gaussian   # a quick look

The references (in this file) are the previous code: per pick, the distance of every candidate to
the new point (``(x - c).norm(dim=1)`` over all N x D, memory-bound), and for the k-NN all N
queries against all N refs chunk by chunk. Without --full-reference the greedy and threshold
decay references make their first --ref-picks picks and are scaled by budget / picks (every pick
costs the same N x D), and the k-NN reference runs --ref-queries queries, scaled by N / queries.
Threshold decay includes its default tau0, the median nearest-neighbour distance (one k-NN).
Data: ``mixture``, a Gaussian mixture of unequal, differently spread clusters offset from 0 (like
image features), and ``gaussian``, a plain standard Gaussian. The machine is shared and noisy, so
the table reports the speed-up over the reference measured in the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import platform
import time

import torch

from chain_of_diffusion.metrics import knn_distances, knn_entropy
from chain_of_diffusion.metrics.entropy import MIN_DISTANCE, _digamma, log_unit_ball_volume
from chain_of_diffusion.select import select_indices

GREEDY_TARGET_S = 60.0
ENTROPY_TARGET_S = 30.0


# ---- the previous implementations -------------------------------------------------------------


def _dists_to(points, x, chunk_size):
    out = torch.empty(points.shape[0], dtype=points.dtype)
    for start in range(0, points.shape[0], chunk_size):
        out[start : start + chunk_size] = (points[start : start + chunk_size] - x).norm(dim=1)
    return out


def reference_greedy(x, first, budget, stop_after, follow=None, chunk_size=8192):
    """The previous greedy_entropy loop; stops after ``stop_after`` picks. With ``follow`` (a pick
    order) it adds those picks instead of its own, at the same cost, and returns for each step
    whether its own argmax was the followed pick and how much farther its own pick was (float32
    direct distances): the check that ``follow`` is a farthest-point order up to rounding."""
    picks = [first]
    agree, gaps = [], []
    min_dist = _dists_to(x, x[first], chunk_size)
    min_dist[first] = -1.0
    for t in range(1, min(budget, stop_after)):
        nxt = int(torch.argmax(min_dist).item())
        if follow is not None:
            agree.append(nxt == follow[t])
            gaps.append(float(min_dist[nxt] - min_dist[follow[t]]))
            nxt = follow[t]
        picks.append(nxt)
        torch.minimum(min_dist, _dists_to(x, x[nxt], chunk_size), out=min_dist)
        min_dist[nxt] = -1.0
    return picks, agree, gaps


def reference_threshold_decay(x, budget, order, tau, stop_after, alpha=0.9, chunk_size=8192):
    """The previous threshold_decay loop (decay_when=empty_pass, pass_size=budget) from a given
    tau0; stops after ``stop_after`` picks."""
    n = x.shape[0]
    min_dist = torch.full((n,), float("inf"))
    selected = torch.zeros(n, dtype=torch.bool)
    picks = []
    stop = min(budget, stop_after)
    while len(picks) < stop:
        stream = order[~selected[order]]
        for start in range(0, stream.shape[0], budget):
            window = stream[start : start + budget]
            pos, added = 0, 0
            while pos < window.shape[0] and len(picks) < stop:
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
            if len(picks) >= stop:
                break
            if added == 0:
                tau *= alpha
    return picks


def reference_knn(queries, refs, chunk_size=2048, offset=0):
    """The previous knn_distances (k=1, exclude_self): every query against all refs, ranked by
    the matmul expansion, the chosen distance recomputed directly. Queries are refs[offset:...]."""
    r_sq = (refs * refs).sum(dim=1)
    out = torch.empty(queries.shape[0])
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start : start + chunk_size]
        sq = ((q * q).sum(dim=1, keepdim=True) + r_sq.unsqueeze(0) - 2.0 * (q @ refs.T)).clamp_(min=0.0)
        rows = torch.arange(q.shape[0])
        sq[rows, rows + offset + start] = float("inf")
        idx = sq.topk(1, dim=1, largest=False).indices
        out[start : start + q.shape[0]] = (q.unsqueeze(1) - refs[idx]).norm(dim=2)[:, 0]
    return out


# ---- data and timing --------------------------------------------------------------------------


def make_data(kind: str, n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(n, dim, generator=g)
    clusters = 100
    weights = 1.0 / torch.arange(1, clusters + 1, dtype=torch.float64)  # Zipf: a few big clusters
    label = torch.multinomial(weights, n, replacement=True, generator=g)
    centers = 2.0 * torch.randn(clusters, dim, generator=g) + 3.0
    spread = 0.3 + 0.7 * torch.rand(clusters, 1, generator=g)
    return centers[label] + spread[label] * torch.randn(n, dim, generator=g)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def best_of(repeats: int, fn):
    runs = [timed(fn) for _ in range(repeats)]
    return min(r[0] for r in runs), runs[0][1]


def same_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two pick orders."""
    n = 0
    for u, v in zip(a, b):
        if u != v:
            break
        n += 1
    return n


def matmul_rate() -> float:
    """fp32 GFLOP/s of a 2048 x 384 by 384 x 2048 matmul now (best of 5): the k-NN and the syncs
    are mostly such matmuls, so this bounds them and shows how busy the machine is."""
    a, b = torch.randn(2048, 384), torch.randn(384, 2048)
    a @ b
    return 2 * 2048 * 2048 * 384 / min(timed(lambda: a @ b)[0] for _ in range(5)) / 1e9


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {load}"
    )


# ---- the benchmark ----------------------------------------------------------------------------


def run_dataset(kind: str, args, rows: list[tuple]) -> None:
    x = make_data(kind, args.n, args.dim)
    n, budget, dim = args.n, args.budget, args.dim
    full = args.full_reference
    stop = budget if full else min(args.ref_picks, budget)
    queries = n if full else min(args.ref_queries, n)
    size = f"{budget:,} of {n:,}"

    if "greedy" in args.tasks:
        ours_s, picks = best_of(
            args.repeats, lambda: select_indices("greedy_entropy", x, budget, seed=0).tolist()
        )
        ref_s, (_, agree, gaps) = timed(lambda: reference_greedy(x, picks[0], budget, stop, follow=picks))
        note = (
            f"ours = reference argmax at {sum(agree):,}/{len(agree):,} steps (else a near-tie: "
            f"worst shortfall {max(gaps, default=0.0):.1e})"
        )
        rows.append(
            ("greedy_entropy", kind, size, ours_s, ref_s * budget / stop, not full, note, GREEDY_TARGET_S)
        )

    if "threshold" not in args.tasks and "entropy" not in args.tasks:
        return
    # the previous k-NN: tau0 of the threshold decay reference and the entropy's reference
    ref_knn_s, ref_nn = timed(lambda: reference_knn(x[:queries], x))
    ref_knn_s *= n / queries

    if "threshold" in args.tasks:
        # default tau0 (the median nearest-neighbour distance: one k-NN), then the filter
        knn_s, nn = best_of(
            args.repeats, lambda: knn_distances(x, x, k=1, chunk_size=2048, exclude_self=True)
        )
        tau0 = float(nn[:, 0].median())
        filt_s, td = best_of(
            args.repeats, lambda: select_indices("threshold_decay", x, budget, seed=0, tau0=tau0).tolist()
        )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        ref_filt_s, ref_td = timed(lambda: reference_threshold_decay(x, budget, order, tau0, stop))
        note = (
            f"first {same_prefix(td, ref_td):,}/{len(ref_td):,} picks equal; tau0 k-NN {knn_s:.1f} s + "
            f"filter {filt_s:.1f} s; reference k-NN {ref_knn_s:.1f} s + filter {ref_filt_s * budget / stop:.1f} s;"
            f" max |r - r_ref| {float((nn[:queries, 0] - ref_nn).abs().max()):.1e} on {queries:,} rows"
        )
        rows.append(
            (
                "threshold_decay",
                kind,
                size,
                knn_s + filt_s,
                ref_knn_s + ref_filt_s * budget / stop,
                not full,
                note,
                None,
            )
        )

    if "entropy" in args.tasks:
        ent_s, h = best_of(args.repeats, lambda: knn_entropy(x))
        note = f"H = {h:.4f} nats"
        if full:
            log_r = torch.log(ref_nn.double().clamp(min=MIN_DISTANCE)).mean().item()
            note += (
                f"; reference H = {_digamma(n) - _digamma(1) + log_unit_ball_volume(dim) + dim * log_r:.4f}"
            )
        rows.append(
            ("knn_entropy", kind, f"{n:,} x {dim}", ent_s, ref_knn_s, not full, note, ENTROPY_TARGET_S)
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50_000, help="candidates")
    p.add_argument("--budget", type=int, default=25_000, help="how many to keep")
    p.add_argument("--dim", type=int, default=384, help="feature dim")
    p.add_argument("--data", nargs="+", default=["mixture", "gaussian"], choices=["mixture", "gaussian"])
    p.add_argument(
        "--tasks",
        nargs="+",
        default=["greedy", "threshold", "entropy"],
        choices=["greedy", "threshold", "entropy"],
    )
    p.add_argument("--repeats", type=int, default=1, help="runs of ours per row (the best is kept)")
    p.add_argument("--full-reference", action="store_true", help="run the references in full, not scaled")
    p.add_argument("--ref-picks", type=int, default=400, help="picks the scaled references make")
    p.add_argument("--ref-queries", type=int, default=4096, help="queries the scaled k-NN reference runs")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's, one per core); 1 is faster while another "
        "process keeps a core busy (oversubscribed threads wait on each other)",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"machine: {machine()}; fp32 matmul {matmul_rate():.0f} GFLOP/s")
    print(f"data: {', '.join(args.data)}; N={args.n:,}, D={args.dim}, budget={args.budget:,}")
    rows: list[tuple] = []
    for kind in args.data:
        run_dataset(kind, args, rows)
    print(
        f"{'task':<16} {'data':<9} {'size':<16} {'ours s':>8} {'reference s':>12} {'speed-up':>9} "
        f"{'target':>8}  notes"
    )
    ok = True
    for task, kind, size, ours, ref, scaled, note, target in rows:
        verdict = "-"
        if target is not None:
            verdict = f"{'pass' if ours <= target else 'FAIL'} <{target:.0f}"
            ok &= ours <= target
        ref_txt = f"{ref:.1f}{'*' if scaled else ''}"
        print(
            f"{task:<16} {kind:<9} {size:<16} {ours:>8.1f} {ref_txt:>12} {ref / ours:>8.1f}x {verdict:>8}  {note}"
        )
    print("* scaled from part of the reference's work (see --help); --full-reference runs it in full")
    print(f"after: {machine()}; fp32 matmul {matmul_rate():.0f} GFLOP/s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
