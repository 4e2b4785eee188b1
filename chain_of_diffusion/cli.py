"""Command-line entry of ``scripts/chain.py``: arguments, logging, and errors -> exit codes.

Errors caused by input (config, data, run directory, launch) print one line and exit 2; the
traceback goes to ``<output_dir>/log.txt`` where the run directory exists.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
# the quickstart: what `scripts/chain.py` runs when no --config is given (configs/ beside scripts/)
QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chain.py",
        description="Run a self-consuming chain of diffusion models (model collapse) and measure it.",
        epilog="Example: accelerate launch scripts/chain.py --config configs/smoke.yaml generations=3 "
        "mix.real_fraction=0.5",
    )
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="YAML config; repeat to merge several, left to right (none: configs/quickstart.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the planned stages")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied after the files")
    return p


def quiet_libraries() -> None:
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    # the Hub client's HTTP package logs every request at INFO: a line per file of every push in log.txt
    for name in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _log_to(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = _parser().parse_args(argv)
    from chain_of_diffusion.bases import ensure_base, is_base_name, spec_of
    from chain_of_diffusion.chain import planned_stages, run_chain
    from chain_of_diffusion.config import load_config, to_yaml
    from chain_of_diffusion.errors import BAD_INPUT as bad_input
    from chain_of_diffusion.errors import LaunchError
    from chain_of_diffusion.launch import leave_process_group, lost_peer
    from chain_of_diffusion.preflight import run_preflight
    from chain_of_diffusion.runs import RunDir, check_output_dir
    try:
        origins: dict[str, str] = {}
        files = args.config or ([str(QUICKSTART)] if QUICKSTART.is_file() else [])
        cfg = load_config(files, args.overrides, origins=origins)
        # files and weights (the pretrained pipeline, Inception, CLIP, DINOv2) and the sizes the model
        # can take, before any work and before a dry run says "to run" about a chain that could not:
        # nothing is written yet
        run_preflight(cfg, origins)
        # an output_dir that is a file or cannot be made; False: a folder that cannot be written
        # (a finished run there is still shown, run_chain decides)
        writable = check_output_dir(cfg.output_dir)
    except bad_input as err:
        print(f"chain.py: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        print(to_yaml(cfg), end="")
        run = RunDir(cfg.output_dir)
        print(f"# planned stages ({cfg.output_dir}):")
        for name, done in planned_stages(cfg, run if run.root.exists() else None):
            print(f"#   {name:24s} {'done' if done else 'to run'}")
        return 0
    quiet_libraries()
    rank = int(os.environ.get("RANK", "0"))
    log_path = Path(cfg.output_dir) / "log.txt"
    handler = None
    try:
        if rank == 0 and writable:
            handler = _log_to(log_path)
        else:  # without a handler, logging's last resort would print tracebacks on the terminal
            logging.getLogger().addHandler(logging.NullHandler())
        if is_base_name(cfg.model.pretrained):  # every process: one builds, the others wait for it
            ensure_base(spec_of(cfg.model.pretrained), say=print if rank == 0 else lambda _: None)
        run_chain(cfg)
        leave_process_group()
        return 0
    except bad_input as err:
        logging.getLogger("chain_of_diffusion").exception("stopped")
        print(f"chain.py: error: {err}", file=sys.stderr)
        if isinstance(err, LaunchError):  # raised on every process at once: leave together (see above)
            leave_process_group()
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("chain.py: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:  # unexpected: keep the traceback in the log, one line on the terminal
        logging.getLogger("chain_of_diffusion").exception("failed")
        if lost_peer(err):
            print(f"chain.py: error: process {rank} of {os.environ.get('WORLD_SIZE')} lost the others at a collective: "
                  f"another process died, or did not answer within train.process_timeout_s="
                  f"{cfg.train.process_timeout_s:g} s ({str(err).strip().splitlines()[0][:200]}); the launcher's summary "
                  "names the process that failed first; re-run the same command to resume", file=sys.stderr)
            return 1
        where = f" (traceback in {log_path})" if handler else ""
        print(f"chain.py: error: {type(err).__name__}: {err}{where}", file=sys.stderr)
        return 1
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
