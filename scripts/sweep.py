#!/usr/bin/env python
"""Run a chain per (variant, seed): ``python scripts/sweep.py --config BASE.yaml --variants
baseline,rediFine,greedy_entropy --seeds 3 [--out runs/sweep] [--jobs 2] [key=value ...]``.

A variant is ``baseline`` (BASE alone) or the name of a preset in ``configs/mitigations/``, merged
after BASE. Each run goes to ``<out>/<variant>/seed<N>/`` through ``scripts/chain.py``, so a killed
sweep resumes where it stopped when re-run. Each chain's output (stdout and stderr, progress bars
included) is appended to ``<out>/<variant>/seed<N>/sweep.log``; a failed chain's last lines are
printed. Then ``scripts/compare.py <out>/*/seed*`` compares them.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "configs" / "mitigations"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
LOG_NAME = "sweep.log"
TAIL_LINES = 20


def known_variants() -> list[str]:
    return ["baseline"] + sorted(p.stem for p in PRESETS.glob("*.yaml"))


def commands(args) -> list[tuple[str, Path, list[str]]]:
    out = []
    for variant in args.variants.split(","):
        # the chain's own default (the quickstart) must stay the base when a preset is added to it
        configs = [c for base in args.config or [str(QUICKSTART)] for c in ("--config", base)]
        if variant != "baseline":
            configs += ["--config", str(PRESETS / f"{variant}.yaml")]
        for seed in range(args.seeds):
            run_dir = Path(args.out) / variant / f"seed{seed}"
            cmd = [sys.executable, str(ROOT / "scripts" / "chain.py"), *configs, *args.overrides,
                   f"seed={seed}", f"output_dir={run_dir}"]
            out.append((f"{variant}/seed{seed}", run_dir, cmd))
    return out


def _tail(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of ``path``; a progress bar's carriage-return updates count as lines."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        text = f.read().decode("utf-8", errors="replace")
    lines = [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-n:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[],
                   help="base config(s), merged left to right (default: configs/quickstart.yaml)")
    p.add_argument("--variants", default="baseline", help=f"comma-separated, from: {', '.join(known_variants())}")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--jobs", type=int, default=1, help="chains at once (each gets cores / jobs threads)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in known_variants()]
    if unknown or args.seeds < 1 or args.jobs < 1:
        what = f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known_variants())}" if unknown \
            else "--seeds and --jobs must be >= 1"
        print(f"sweep.py: error: {what}", file=sys.stderr)
        return 2
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if args.jobs > 1 else dict(os.environ)
    pending, running, failed = commands(args), [], []
    while pending or running:
        while pending and len(running) < args.jobs:
            name, run_dir, cmd = pending.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            log_path = run_dir / LOG_NAME
            print(f"[sweep] start {name} (output in {log_path})", flush=True)
            # the child writes straight into the file: no pipe that a chatty child (tqdm) could fill while
            # nobody reads it
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            running.append((name, log_path, proc))
        for name, log_path, proc in list(running):
            if proc.poll() is not None:
                running.remove((name, log_path, proc))
                if proc.returncode == 0:
                    print(f"[sweep] {name}: done", flush=True)
                    continue
                failed.append(name)
                tail = _tail(log_path, TAIL_LINES)
                print(f"[sweep] {name}: FAILED (exit {proc.returncode}); last lines of {log_path}:", flush=True)
                for line in tail:
                    print(f"    {line}", flush=True)
        time.sleep(0.5)
    print(f"[sweep] compare with: python scripts/compare.py {args.out}/*/seed*")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
