"""Scaling over processes, and the cost model of a Stable Diffusion 1.5 chain.

    python benchmarks/scaling.py                    # the chain at 1 and 2 CPU processes, one thread each
    python benchmarks/scaling.py --processes 1 8    # on an 8-GPU machine (no ACCELERATE_USE_CPU)
    python benchmarks/scaling.py --flops            # FLOPs per image of SD 1.5 at 512 px, LoRA bytes per step

The scaling part runs the real entry point (``accelerate launch scripts/chain.py``) on one LoRA generation of
the tiny_sd pipeline (made here, random weights) with the same config at each process count, and reads each
stage's ``gen_00/timing.json``: the stage's wall time (the slowest process's work plus wait), the speedup
over the first process count, and the idle share (the part of all processes' time spent waiting for others).

The FLOPs part counts, with torch's FlopCounterMode on the real SD 1.5 layout (random weights; on the GPU where there is one), the
UNet forward at 64x64 latents (batch 2 for CFG), a LoRA training step (forward and backward, base frozen),
the VAE decode and encode, and torchvision's Inception v3 at 299 px (the FID network's layout), plus the
bytes of LoRA gradients that DDP all-reduces per step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import device, tflops_of

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train", "generate", "evaluate")


def run_chain(processes: int, out: Path, pipeline: Path, images: int, cpu: bool) -> dict:
    """One generation of the tiny_sd LoRA chain on ``processes`` processes; gen_00/timing.json."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    launcher = ["--multi_gpu"] if processes > 1 else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "scripts" / "chain.py"), "--config", str(ROOT / "configs" / "tiny_sd_lora.yaml"),
           f"output_dir={out}", f"model.pretrained={pipeline}", "generations=1", f"data.num_train={images}",
           "data.num_heldout=64", "train.steps=16", "train.batch_size=16", "train.micro_batch_size=8",
           "sample.steps=10", "sample.batch_size=16", "metrics.classifier_steps=20"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"scaling: the {processes}-process chain failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "gen_00" / "timing.json").read_text())


def scaling(args) -> None:
    cpu = args.cpu or device().type == "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Path(tmp) / "tiny_sd"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_pipeline.py"), str(pipeline)],
                       check=True, capture_output=True)
        timings = {n: run_chain(n, Path(tmp) / f"run{n}", pipeline, args.images, cpu) for n in args.processes}
    first = args.processes[0]
    print(f"{platform.machine()} {os.cpu_count()} cores, {'CPU' if cpu else 'GPU'} processes with 1 thread each; "
          f"tiny_sd LoRA, {args.images} images, 16 training steps at batch 16, 10 sampling steps")
    print(f"{'stage':>9} {'processes':>9} {'wall s':>7} {'speedup':>8} {'idle share':>10} {'images/s':>9}")
    for stage in STAGES:
        base = None
        for n, timing in timings.items():
            t = timing[stage]
            wall = max(w + s for w, s in zip(t["work_s"], t["wait_s"]))
            base = base or wall
            rate = f"{args.images / wall:9.1f}" if stage != "train" else f"{'':>9}"
            print(f"{stage:>9} {n:>9} {wall:7.2f} {base / wall:7.2f}x {t['idle_share']:10.3f} {rate}"
                  + ("  (reference)" if n == first else ""))


def flops(args) -> None:
    import torch
    from torchvision.models import inception_v3

    from chain_of_diffusion.config import ModelConfig, TrainConfig
    from chain_of_diffusion.models.build import build_model
    from chain_of_diffusion.models.lora import add_lora

    torch.manual_seed(0)
    dev = device()
    model = build_model(ModelConfig(arch="sd15"), 512, seed=0).to(dev)  # FLOPs are the same on any device
    latent = torch.randn(2, 4, 64, 64, device=dev)
    text = torch.randn(2, 77, 768, device=dev)
    t = torch.tensor([500, 500], device=dev)
    with torch.no_grad():
        unet_cfg = tflops_of(lambda: model.unet(latent, t, text))  # one sampling step with CFG: 2 rows
        decode = tflops_of(lambda: model.vae.decode(latent[:1] / 0.18215))
        encode = tflops_of(lambda: model.vae.encode(torch.randn(1, 3, 512, 512, device=dev)))
        inception = tflops_of(lambda: inception_v3(weights=None, aux_logits=False, init_weights=False).eval().to(dev)(
            torch.randn(1, 3, 299, 299, device=dev)))
    cfg = TrainConfig(mode="lora", init="base", lora_rank=4)
    add_lora(model.unet, cfg, seed=0)
    lora = [p for p in model.unet.parameters() if p.requires_grad]

    def train_step():
        model.unet(latent[:1], t[:1], text[:1]).sample.square().mean().backward()

    step = tflops_of(train_step)
    print(f"SD 1.5 at 512 px (FlopCounterMode, TFLOPs per image): UNet step with CFG {unet_cfg:.3f}; "
          f"LoRA training step (forward + backward, base frozen) {step:.3f}; VAE decode {decode:.3f}, "
          f"encode {encode:.3f}; Inception v3 at 299 px {inception:.4f}")
    print(f"LoRA rank {cfg.lora_rank} on {list(cfg.lora_target_modules)}: {sum(p.numel() for p in lora):,} "
          f"parameters, {4 * sum(p.numel() for p in lora) / 1e6:.1f} MB of fp32 gradients all-reduced per step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--images", type=int, default=256, help="images generated and scored")
    p.add_argument("--cpu", action="store_true", help="CPU processes even where a GPU is present")
    p.add_argument("--flops", action="store_true", help="the SD 1.5 cost model's FLOPs instead")
    args = p.parse_args()
    flops(args) if args.flops else scaling(args)


if __name__ == "__main__":
    main()
