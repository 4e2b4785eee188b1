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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="digits", help="the preset (chain_of_diffusion.bases.BASES)")
    p.add_argument("--sweep", default=None, metavar="S1,S2,...",
                   help="CFG scales to measure the base's caption accuracy at")
    p.add_argument("--per-class", type=int, default=50, help="sweep: samples per caption")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="changes to the preset's spec")
    args = p.parse_args(argv)
    from chain_of_diffusion.bases import caption_accuracy_sweep, ensure_base, spec_of, spec_with
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
