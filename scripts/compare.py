#!/usr/bin/env python
"""Compare finished chains: ``python scripts/compare.py RUN_DIR... [--out DIR] [--metrics a,b]``.

Writes one plot per metric (a curve per variant: mean and min-max band over seeds) and
``comparison.md`` (the last generation's metrics per variant, mean ± std; with --metrics also every generation).
"""

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (a folder named seedN is grouped by its parent)")
    p.add_argument("--out", default="comparison", help="output folder (default: ./comparison)")
    p.add_argument("--metrics", help="comma-separated metrics for the tables (default: all); also adds a "
                   "table of every generation")
    args = p.parse_args(argv)
    from chain_of_diffusion.metrics.compare import compare

    try:
        md = compare([Path(r) for r in args.runs], Path(args.out),
                     args.metrics.split(",") if args.metrics else None)
    except (FileNotFoundError, ValueError) as err:
        print(f"compare.py: error: {err}", file=sys.stderr)
        return 2
    print(md.read_text())
    print(f"written: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
