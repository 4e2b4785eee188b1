"""Wall time and peak memory of a chain run, and the trainer's step time against a plain loop.

    python benchmarks/quickstart.py                      # the quickstart (4 generations)
    python benchmarks/quickstart.py --fresh-base         # ... with its pretrained base built first, as a first run
    python benchmarks/quickstart.py --config configs/smoke.yaml

Runs the real entry point in a child process (start-up included), reads the per-stage seconds
from ``state.json``, then times, in this process, our trainer against a plain diffusers-style
loop (the same UNet, batch and optimizer; no accelerate, no checkpoints, no EMA) so the
overhead of the trainer is a ratio measured on the same machine in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_chain(config: list[str], overrides: list[str], out: Path, env: dict | None = None) -> dict:
    cmd = [sys.executable, str(ROOT / "scripts" / "chain.py")]
    for c in config:
        cmd += ["--config", c]
    cmd += [f"output_dir={out}", *overrides]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"chain failed:\n{proc.stderr[-3000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    state = json.loads((out / "state.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"wall_s": wall, "peak_rss_mib": peak_kib / 1024, "stage_s": state.get("seconds", {}),
            "metrics": metrics}


def time_trainer_vs_plain(steps: int = 30, batch_size: int = 64) -> dict:
    import torch
    from accelerate import Accelerator

    from chain_of_diffusion.config import ModelConfig, TrainConfig
    from chain_of_diffusion.models.build import build_model, encode_captions
    from chain_of_diffusion.train import TrainData, train_denoiser

    model = build_model(ModelConfig(), 16, seed=0)
    emb = encode_captions(model, [f"a handwritten digit {w}" for w in ("one", "two")] + [""])
    data = TrainData(torch.rand(512, 3, 16, 16) * 2 - 1, torch.arange(512) % 2, emb[:2], emb[2:])

    # plain loop: what diffusers' train_text_to_image.py does per step, minus the VAE
    unet = build_model(ModelConfig(), 16, seed=0).unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    sched = model.noise_scheduler
    started = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, 512, (batch_size,))
        x0, cond = data.x0[idx], emb[data.caption_index[idx]]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch_size,))
        loss = torch.nn.functional.mse_loss(unet(sched.add_noise(x0, noise, t), t, cond).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    plain = (time.perf_counter() - started) / steps

    cfg = TrainConfig(steps=steps, batch_size=batch_size, checkpoint_every=10**9, log_every=10, ema_decay=0.995)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        train_denoiser(model.unet, sched, data, cfg, seed=0, accelerator=Accelerator(cpu=True),
                       checkpoint_dir=Path(tmp))
        ours = (time.perf_counter() - started) / steps
    return {"plain_step_s": plain, "ours_step_s": ours, "ours_over_plain": ours / plain}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[])
    p.add_argument("--out", default=None, help="run directory (default: a temporary folder)")
    p.add_argument("--fresh-base", action="store_true",
                   help="build the pretrained base (model.pretrained: base:...) into an empty cache first")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="cod-bench-")) / "run"
    env = {"CHAIN_OF_DIFFUSION_CACHE": tempfile.mkdtemp(prefix="cod-bench-cache-")} if args.fresh_base else None
    chain = run_chain(args.config, args.overrides, out, env)
    base_info = out / "reference" / "base.json"
    if base_info.is_file():  # where the run's pretrained folder is a base made here: its build time
        folder = Path(json.loads(base_info.read_text())["folder"])
        if (folder / "base.json").is_file():
            chain["base_build_s"] = json.loads((folder / "base.json").read_text()).get("build_seconds")
    steps = time_trainer_vs_plain()
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "config": args.config or ["configs/quickstart.yaml"],
        "fresh_base": args.fresh_base,
        "overrides": args.overrides,
        "chain": chain,
        "trainer": steps,
    }
    print(json.dumps(report, indent=2))
    print(f"\nwall time {chain['wall_s']:.0f} s, peak RSS {chain['peak_rss_mib']:.0f} MiB; "
          f"trainer step {steps['ours_step_s'] * 1000:.0f} ms vs plain loop {steps['plain_step_s'] * 1000:.0f} ms "
          f"(ratio {steps['ours_over_plain']:.2f})")


if __name__ == "__main__":
    main()
