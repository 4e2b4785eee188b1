"""Generation throughput: the chain's sampling loop against ``StableDiffusionPipeline.__call__``.

    python benchmarks/generate.py                          # tiny_sd at 32x32 and 64x64, CPU
    python benchmarks/generate.py --arch sd15 --resolution 512 --num-images 32   # on a GPU

Both render the same captions with the same model (a LoRA attached, as in a chain), the same DDIM
scheduler, steps and CFG scale, in batches of the same size, one seed per image, and decode with
the VAE; ours is ``generate.render`` (what the generate stage runs on each process), the
reference is the diffusers pipeline with a generator per image. Prints images/s and the ratio.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch


def build(arch: str, resolution: int):
    from chain_of_diffusion.config import ModelConfig, TrainConfig
    from chain_of_diffusion.models.build import build_model
    from chain_of_diffusion.models.lora import add_lora

    model = build_model(ModelConfig(arch=arch), resolution, seed=0)
    add_lora(model.unet, TrainConfig(mode="lora", init="base"), seed=0)
    model.unet.eval()
    return model


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    from chain_of_diffusion.config import SampleConfig
    from chain_of_diffusion.generate import render
    from chain_of_diffusion.models.pretrained import as_pipeline
    from chain_of_diffusion.processes.ddpm import make_scheduler

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="tiny_sd")
    p.add_argument("--resolution", type=int, nargs="+", default=[32, 64])
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = SampleConfig(steps=args.steps, scheduler="ddim", guidance_scale=args.guidance, batch_size=args.batch_size)
    captions = [f"a handwritten digit {i % 10}" for i in range(args.num_images)]
    requests = [{"text": c, "seed": 1000 + i} for i, c in enumerate(captions)]
    print(f"device {device} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.arch}, {args.num_images} images, batch {args.batch_size}, "
          f"{args.steps} DDIM steps, CFG {args.guidance}")
    print(f"{'resolution':>10} {'pipeline img/s':>15} {'ours img/s':>11} {'ratio':>6}")
    for resolution in args.resolution:
        model = build(args.arch, resolution).to(device)
        pipe = as_pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = make_scheduler("ddim", model.noise_scheduler.config)

        def reference(pipe=pipe):
            for lo in range(0, len(requests), args.batch_size):
                chunk = requests[lo : lo + args.batch_size]
                pipe([r["text"] for r in chunk], num_inference_steps=args.steps, guidance_scale=args.guidance,
                     generator=[torch.Generator().manual_seed(r["seed"]) for r in chunk], output_type="pt")

        def ours(model=model):
            render(model, requests, cfg)

        with torch.no_grad():
            reference()  # warm-up of both paths at this size
            ours()
            timings = {"reference": float("inf"), "ours": float("inf")}
            for _ in range(args.repeats):  # alternated, best of each: robust to a busy machine
                for name, fn in (("reference", reference), ("ours", ours)):
                    _sync(device)
                    started = time.perf_counter()
                    fn()
                    _sync(device)
                    timings[name] = min(timings[name], time.perf_counter() - started)
        n = len(requests)
        print(f"{resolution:>10} {n / timings['reference']:>15.1f} {n / timings['ours']:>11.1f} "
              f"{timings['reference'] / timings['ours']:>6.2f}")


if __name__ == "__main__":
    main()
