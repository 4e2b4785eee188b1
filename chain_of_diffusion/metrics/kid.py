"""Kernel distance (KID: unbiased squared MMD with the cubic polynomial kernel) through torch-fidelity.

Kept as torch-fidelity computes it, so ``kid_inception`` is comparable with the literature:
k(x, y) = (x.y / D + 1)^3, the unbiased MMD^2 estimate averaged over ``subsets`` random subsets of
``subset_size`` rows from each set (no I/O).
"""

from __future__ import annotations

from torch import Tensor

SUBSETS = 100  # torch-fidelity's defaults
SUBSET_SIZE = 1000


def kernel_distance(
    a: Tensor, b: Tensor, subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE, seed: int = 2020
) -> tuple[float, float]:
    """KID between two feature sets.

    Args:
        a: (N, D); b: (M, D), N, M >= 2.
        subsets: random subsets averaged over.
        subset_size: rows per subset; lowered to min(N, M) for small sets (the estimate stays
            unbiased, only noisier).
        seed: of the subset draws (torch-fidelity's default 2020).

    Returns:
        (mean, std) over the subsets. The mean can be slightly negative when the sets match.
    """
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    smallest = min(a.shape[0], b.shape[0])
    if smallest < 2:
        raise ValueError(f"a kernel distance needs at least 2 images per set, got {smallest}")
    out = kid_features_to_metric(
        a.detach().float().cpu(), b.detach().float().cpu(), kid_subsets=subsets,
        kid_subset_size=min(subset_size, smallest), rng_seed=seed, verbose=False,
    )
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]
