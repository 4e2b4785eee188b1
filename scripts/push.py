#!/usr/bin/env python
"""Push the generations of a chain that are not on the Hub yet (offline runs, a Hub that failed).

    python scripts/push.py runs/my_chain

Reads the run's ``config.yaml`` (``hub.repo_id`` and the other ``hub`` keys), and pushes every evaluated
generation whose push is pending, oldest first, one line per generation; the token comes from HF_TOKEN
or the cached login. Exit 0 when every generation is on the Hub, 1 when some are still pending (the
line says why), 2 on bad input (no run, no hub.repo_id, no token, a repo that holds another chain)
or while a chain runs in that directory.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a chain's output_dir")
    args = p.parse_args(argv)

    from chain_of_diffusion.config import load_config
    from chain_of_diffusion.errors import BAD_INPUT
    from chain_of_diffusion.hub import is_offline
    from chain_of_diffusion.preflight import check_hub_token
    from chain_of_diffusion.runs import RunDir
    from chain_of_diffusion.stages.push import push_pending

    run = RunDir(args.run_dir)
    try:
        if not run.config_path.is_file():
            raise FileNotFoundError(f"{run.root}: no config.yaml (not a chain's output_dir)")
        cfg = load_config([run.config_path], [f"output_dir={run.root}"])
        if cfg.hub.repo_id is None:
            raise ValueError(f"{run.root}: hub.repo_id is not set in its config.yaml; nothing to push to")
        if is_offline():
            raise ValueError("HF_HUB_OFFLINE=1: pushing needs the Hub; unset it")
        check_hub_token(cfg)
        run.acquire_lock()
    except (*BAD_INPUT, OSError, ValueError) as err:
        print(f"push.py: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        pushed, pending = push_pending(run, cfg, say=print)
    except BAD_INPUT as err:  # a repo that holds another chain
        print(f"push.py: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        run.release_lock()
    if not pushed and not pending:
        print(f"nothing pending: every evaluated generation of {Path(args.run_dir)} is on {cfg.hub.repo_id}")
    return 1 if pending else 0


if __name__ == "__main__":
    sys.exit(main())
