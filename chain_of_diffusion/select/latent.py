"""Latent space filtering (Cai et al. 2025, "Stabilizing Self-Consuming Diffusion Models with Latent
Space Filtering", arXiv 2511.12742): math only, no I/O.

Candidates are embedded by the generation-0 model's own UNet encoder (down blocks + mid block, the
mid block's output averaged over space) at a noise level t. A linear probe trained once on the
embeddings of real images with their class labels scores each candidate by the probability it
gives the candidate's own label; without labels the score is the negated distance to the k-th
nearest real embedding. The top ``budget`` scores are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..metrics.neighbors import knn_distances


class _EncoderDone(Exception):
    """Raised from a forward hook to stop the UNet after its encoder (the up blocks are not needed)."""


def encoder_module(unet: torch.nn.Module) -> torch.nn.Module:
    """The last module of the UNet's encoder: the mid block, or the last down block without one."""
    mid = getattr(unet, "mid_block", None)
    return mid if mid is not None else unet.down_blocks[-1]


def fixed_noise(shape: tuple[int, ...], seed: int) -> Tensor:
    """One seeded (C, H, W) noise image. Every candidate gets the same one, so an image's embedding
    depends on the image alone (not on its position in a batch or set) and can be cached by content."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))


@torch.no_grad()
def unet_embeddings(
    unet: torch.nn.Module,
    scheduler,
    x0: Tensor,
    t: int,
    seed: int,
    context: Tensor,
    batch_size: int = 64,
) -> Tensor:
    """Pooled UNet-encoder features of ``x0`` noised to timestep ``t``.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (eval mode; its device and dtype are used).
        scheduler: the model's noise scheduler (``add_noise(x0, noise, timesteps)``).
        x0: (N, C, H, W) what the UNet denoises (pixels in [-1, 1], or scaled VAE latents).
        t: timestep in [0, scheduler.config.num_train_timesteps).
        seed: seeds the one noise image added to every candidate (:func:`fixed_noise`).
        context: (1, L, E) encoder hidden states; the empty caption's, so the embedding carries
            only what the image says (a caption would hand the probe the label).
        batch_size: images per forward pass.

    Returns:
        (N, D) float32 on the CPU, D = the encoder's last channel count.
    """
    num_t = int(scheduler.config.num_train_timesteps)
    if not 0 <= int(t) < num_t:
        raise ValueError(f"t must be in [0, {num_t}), got {t}")
    param = next(unet.parameters())
    device, dtype = param.device, param.dtype
    noise = fixed_noise(tuple(x0.shape[1:]), seed)
    captured: list[Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _EncoderDone

    handle = encoder_module(unet).register_forward_hook(hook)
    out = []
    try:
        for start in range(0, x0.shape[0], batch_size):
            batch = x0[start : start + batch_size].float()
            timesteps = torch.full((batch.shape[0],), int(t), dtype=torch.long)
            xt = scheduler.add_noise(batch, noise.expand_as(batch), timesteps)
            captured.clear()
            try:
                unet(
                    xt.to(device, dtype),
                    timesteps.to(device),
                    encoder_hidden_states=context.to(device, dtype).expand(batch.shape[0], -1, -1),
                )
            except _EncoderDone:
                pass
            out.append(captured[0].float().mean(dim=(2, 3)).cpu())
    finally:
        handle.remove()
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


@dataclass
class LinearProbe:
    """A multinomial logistic regression on standardized features.

    Attributes: mean, scale (D,); weight (K, D); bias (K,); classes (K,) int64 labels.
    """

    mean: Tensor
    scale: Tensor
    weight: Tensor
    bias: Tensor
    classes: Tensor

    def state(self) -> dict[str, Tensor]:
        """Tensors for ``safetensors.torch.save_file``."""
        return {k: getattr(self, k).contiguous() for k in ("mean", "scale", "weight", "bias", "classes")}

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> LinearProbe:
        return cls(**{k: state[k] for k in ("mean", "scale", "weight", "bias", "classes")})

    def probabilities(self, features: Tensor) -> Tensor:
        """(N, D) -> (N, K) class probabilities, columns in the order of ``classes``."""
        z = (features.float() - self.mean) / self.scale
        return torch.softmax(z @ self.weight.T + self.bias, dim=1)


def fit_probe(features: Tensor, labels: Tensor, seed: int = 0, c: float = 1.0, max_iter: int = 2000) -> LinearProbe:
    """A linear probe (L2-regularized logistic regression, lbfgs) fit on (N, D) ``features`` and
    (N,) integer ``labels`` with at least 2 distinct values. Deterministic for a given seed."""
    from sklearn.linear_model import LogisticRegression

    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"need (N, D) features and (N,) labels, got {tuple(features.shape)} and {tuple(labels.shape)}")
    classes = torch.unique(labels.long())
    if classes.numel() < 2:
        raise ValueError(f"a probe needs at least 2 classes, got {classes.tolist()}")
    x = features.double()
    mean = x.mean(dim=0)
    # features that never vary get scale 1: they carry nothing, and 0 would divide by zero
    scale = x.std(dim=0, unbiased=False)
    scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
    model = LogisticRegression(C=c, max_iter=max_iter, random_state=int(seed) % 2**32)
    model.fit(((x - mean) / scale).numpy(), labels.long().numpy())
    weight = torch.as_tensor(model.coef_, dtype=torch.float32)
    bias = torch.as_tensor(model.intercept_, dtype=torch.float32)
    if weight.shape[0] == 1:  # sklearn's binary case: one logit for classes_[1]; softmax needs two
        weight = torch.cat([torch.zeros_like(weight), weight])
        bias = torch.cat([torch.zeros_like(bias), bias])
    return LinearProbe(
        mean=mean.float(), scale=scale.float(), weight=weight, bias=bias,
        classes=torch.as_tensor(model.classes_, dtype=torch.long),
    )


def probe_scores(probe: LinearProbe, features: Tensor, labels: Tensor) -> Tensor:
    """(N,) the probe's probability of each candidate's own label (labels: (N,) int)."""
    lookup = {int(c): j for j, c in enumerate(probe.classes.tolist())}
    missing = sorted({int(v) for v in labels.tolist()} - set(lookup))
    if missing:
        raise ValueError(f"labels {missing} were not among the probe's classes {sorted(lookup)}")
    cols = torch.tensor([lookup[int(v)] for v in labels.tolist()], dtype=torch.long)
    return probe.probabilities(features).gather(1, cols.unsqueeze(1)).squeeze(1)


def stratified_folds(labels: Tensor, folds: int, seed: int = 0) -> Tensor:
    """(N,) fold id in [0, folds) per sample: each class is shuffled (seeded) and dealt round-robin,
    so every class with at least ``folds`` members is in every fold."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    gen = torch.Generator().manual_seed(int(seed))
    fold = torch.empty(labels.shape[0], dtype=torch.long)
    for c in torch.unique(labels.long()).tolist():
        members = torch.nonzero(labels.long() == c).squeeze(1)
        members = members[torch.randperm(members.numel(), generator=gen)]
        fold[members] = torch.arange(members.numel()) % folds
    return fold


def own_label_probability(probe: LinearProbe, features: Tensor, labels: Tensor) -> Tensor:
    """(N,) like :func:`probe_scores`, but a label the probe never saw scores 0 (a fold's probe may
    miss a rare class that only the held-out fold has)."""
    lookup = {int(c): j for j, c in enumerate(probe.classes.tolist())}
    probs = probe.probabilities(features)
    cols = torch.tensor([lookup.get(int(v), 0) for v in labels.tolist()], dtype=torch.long)
    known = torch.tensor([int(v) in lookup for v in labels.tolist()], dtype=torch.bool)
    return torch.where(known, probs.gather(1, cols.unsqueeze(1)).squeeze(1), torch.zeros(()))


def cross_fitted_scores(probes: list[LinearProbe], real_fold: Tensor, real_features: Tensor, real_labels: Tensor,
                        sample_features: Tensor, sample_labels: Tensor) -> Tensor:
    """Scores of the pooled real + synthetic candidates without in-sample bias.

    A probe scores real images it was fit on too confidently, which would favour them over the
    synthetic candidates. With K probes, probe f fit on the real images outside fold f: a real
    image gets the score of the probe that never saw it, a synthetic one the mean over the K
    probes. With one probe (K = 1) every candidate is scored by it (in-sample for the real ones).

    Args:
        probes: K fitted probes; real_fold: (R,) fold of each real image (ignored for K = 1).
        real_features: (R, D), real_labels: (R,); sample_features: (S, D), sample_labels: (S,).

    Returns:
        (R + S,) scores, real candidates first.
    """
    if len(probes) == 1:
        return torch.cat([own_label_probability(probes[0], real_features, real_labels),
                          own_label_probability(probes[0], sample_features, sample_labels)])
    real = torch.empty(real_features.shape[0])
    for f, probe in enumerate(probes):
        rows = real_fold == f
        real[rows] = own_label_probability(probe, real_features[rows], real_labels[rows])
    synthetic = torch.stack([own_label_probability(p, sample_features, sample_labels) for p in probes]).mean(dim=0)
    return torch.cat([real, synthetic])


def knn_scores(features: Tensor, reference: Tensor, k: int, in_reference: Tensor | None = None) -> Tensor:
    """(N,) minus the distance of each candidate to its k-th nearest reference embedding.

    ``in_reference`` (N,) bool marks candidates that are themselves reference points: their own
    zero distance is skipped (the (k+1)-th neighbour is used), or real candidates would always win.
    """
    if k < 1 or k >= reference.shape[0]:
        raise ValueError(f"k must be in [1, {reference.shape[0] - 1}] for {reference.shape[0]} reference points, got {k}")
    d = knn_distances(features.float(), reference.float(), k=k + 1)
    if in_reference is None:
        in_reference = torch.zeros(features.shape[0], dtype=torch.bool)
    return -torch.where(in_reference, d[:, k], d[:, k - 1])


def top_n(scores: Tensor, budget: int) -> Tensor:
    """Indices of the ``budget`` highest scores, best first; ties go to the lower index."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:budget].long()
