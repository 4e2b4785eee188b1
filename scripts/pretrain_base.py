#!/usr/bin/env python
"""Build the pretrained base the quickstart's LoRA chain finetunes (once; later calls reuse it).

    python scripts/pretrain_base.py                          # base:digits, ~2 min on 2 CPU cores
    python scripts/pretrain_base.py --sweep 1,2,3,5,7.5      # then its caption accuracy per CFG scale
    python scripts/pretrain_base.py steps=2000               # another spec: another cache folder

It prints the folder, which ``model.pretrained`` takes as it takes any pipeline folder;
``model.pretrained: base:digits`` finds (or builds) the preset's folder by itself. A killed build
resumes where it stopped. See chain_of_diffusion/bases.py for what the base is and how it is trained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def caption_accuracy_sweep(spec, folder: Path, scales: list[float], per_class: int = 50,
                           steps: int = 20, seed: int = 0) -> dict[float, float]:
    """Caption accuracy of the base at each CFG scale: ``per_class`` samples per caption of its
    pretraining set (``steps`` DDIM steps), classified by a classifier trained on those real images."""
    import torch

    from chain_of_diffusion.bases import pretraining_set
    from chain_of_diffusion.config import SampleConfig
    from chain_of_diffusion.generate import render
    from chain_of_diffusion.metrics.classifier import accuracy, train_classifier
    from chain_of_diffusion.models.build import load_model
    from chain_of_diffusion.seeding import derive_seed

    images, captions, labels = pretraining_set(spec)
    classifier = train_classifier(images, torch.tensor(labels), steps=600, seed=derive_seed(seed, "sweep-classifier"))
    label_of = dict(zip(captions, labels))
    unique = sorted(label_of)
    requests = [{"index": i, "text": text, "seed": derive_seed(seed, "sweep", i)}
                for i, text in enumerate(t for t in unique for _ in range(per_class))]
    truth = torch.tensor([label_of[r["text"]] for r in requests])
    model = load_model(folder)
    out = {}
    for scale in scales:
        samples = render(model, requests, SampleConfig(steps=steps, guidance_scale=scale))
        out[scale] = accuracy(classifier, samples, truth)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="digits", help="the preset (chain_of_diffusion.bases.BASES)")
    p.add_argument("--sweep", default=None, metavar="S1,S2,...",
                   help="CFG scales to measure the base's caption accuracy at")
    p.add_argument("--per-class", type=int, default=50, help="sweep: samples per caption")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="changes to the preset's spec")
    args = p.parse_args(argv)
    from chain_of_diffusion.bases import ensure_base, spec_of, spec_with
    from chain_of_diffusion.cli import quiet_libraries
    from chain_of_diffusion.errors import BAD_INPUT

    quiet_libraries()

    try:
        scales = [float(s) for s in args.sweep.split(",")] if args.sweep else []
    except ValueError:
        print(f"pretrain_base.py: error: --sweep {args.sweep!r}: give numbers separated by commas", file=sys.stderr)
        return 2
    try:
        spec = spec_with(spec_of(args.name), args.overrides)
        folder = ensure_base(spec)
    except BAD_INPUT as err:
        print(f"pretrain_base.py: error: {err}", file=sys.stderr)
        return 2
    print(folder)
    if scales:
        accuracies = caption_accuracy_sweep(spec, folder, scales, per_class=args.per_class)
        print("CFG scale  caption accuracy")
        for scale, acc in accuracies.items():
            print(f"{scale:9g}  {acc:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
