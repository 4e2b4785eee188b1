#!/usr/bin/env python
"""Write a random-weight Stable Diffusion pipeline folder of the ``tiny_sd`` layout.

    python scripts/make_tiny_pipeline.py pipelines/tiny_sd [--resolution 32] [--arch tiny_sd|sd15]

It stands in for a pretrained pipeline where none can be downloaded: ``configs/tiny_sd_lora.yaml``
runs a LoRA chain on it, and ``StableDiffusionPipeline.from_pretrained`` loads it as it is.
``--arch sd15`` writes the full Stable Diffusion 1.5 layout (3.4 GB of random weights) for
throughput measurements.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder to write (must not exist)")
    p.add_argument("--resolution", type=int, default=32, help="image side in pixels (the UNet's sample size x 8)")
    p.add_argument("--arch", default="tiny_sd", choices=["tiny_sd", "sd15"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        print(f"error: {out} exists; choose a new folder", file=sys.stderr)
        return 2
    if args.resolution < 8 or args.resolution % 8:
        print(f"error: --resolution {args.resolution} must be a positive multiple of 8", file=sys.stderr)
        return 2

    from chain_of_diffusion.config import ModelConfig
    from chain_of_diffusion.models.build import build_model
    from chain_of_diffusion.models.pretrained import save_pipeline

    save_pipeline(build_model(ModelConfig(arch=args.arch), args.resolution, seed=args.seed), out)
    print(f"wrote {out} ({args.arch}, {args.resolution}x{args.resolution})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
