#!/usr/bin/env python
"""Run a chain: ``accelerate launch scripts/chain.py [--config FILE]... [--dry-run] [key=value ...]``."""

import sys

from chain_of_diffusion.cli import main

if __name__ == "__main__":
    sys.exit(main())
