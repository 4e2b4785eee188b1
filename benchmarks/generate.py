"""Generation throughput: the chain's sampling loop against ``StableDiffusionPipeline.__call__``.

    python benchmarks/generate.py                          # tiny_sd at 32x32 and 64x64, CPU
    python benchmarks/generate.py --arch sd15 --resolution 512 --num-images 32 --precision bf16 --attention xformers

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
from measure import DTYPES, device, mfu, peak_gib, peak_tflops, reset_peak, sync, tflops_of


def build(arch: str, resolution: int, dtype: torch.dtype, attention: str, dev: torch.device):
    """The model in ``dtype`` with a LoRA attached in fp32, as a chain generation holds it."""
    from chain_of_diffusion.config import ModelConfig, TrainConfig
    from chain_of_diffusion.models.build import build_model, set_attention
    from chain_of_diffusion.models.lora import add_lora

    model = build_model(ModelConfig(arch=arch), resolution, seed=0)
    if dtype != torch.float32:  # the frozen weights in the compute dtype
        model.to(dtype)
    add_lora(model.unet, TrainConfig(mode="lora", init="base"), seed=0)
    model.unet.eval()
    model.to(dev)
    set_attention(model.unet, attention, dev)
    return model


def tflops_per_image(model, steps: int, dev: torch.device) -> float:
    """One image's model FLOPs: ``steps`` UNet calls on its 2 CFG rows, then the VAE decode."""
    latent = torch.randn(2, *model.sample_shape, device=dev)
    text = torch.randn(2, 77, model.text_encoder.config.hidden_size, device=dev)
    t = torch.tensor([500, 500], device=dev)
    with torch.no_grad():
        unet = tflops_of(lambda: model.unet(latent, t, text))
        decode = tflops_of(lambda: model.vae.decode(latent[:1]))
    return steps * unet + decode


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
    p.add_argument("--precision", choices=sorted(DTYPES), default="fp32", help="compute dtype (autocast)")
    p.add_argument("--attention", choices=["sdpa", "xformers"], default="sdpa")
    p.add_argument("--peak-tflops", type=float, help="the device's dense peak, where measure.py does not know it")
    args = p.parse_args()
    dev, dtype = device(), DTYPES[args.precision]
    peak = peak_tflops(dev, dtype, args.peak_tflops)
    cfg = SampleConfig(steps=args.steps, scheduler="ddim", guidance_scale=args.guidance, batch_size=args.batch_size)
    captions = [f"a handwritten digit {i % 10}" for i in range(args.num_images)]
    requests = [{"text": c, "seed": 1000 + i} for i, c in enumerate(captions)]
    print(f"device {dev} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.arch}, {args.num_images} images, batch {args.batch_size}, "
          f"{args.steps} DDIM steps, CFG {args.guidance}, {args.precision}, {args.attention}; peak {peak} TFLOP/s")
    print(f"{'resolution':>10} {'pipeline img/s':>15} {'ours img/s':>11} {'ratio':>6} {'peak GiB':>13} "
          f"{'MFU':>13} {'TFLOPs/img':>11}")

    def autocast():
        return torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32)

    for resolution in args.resolution:
        model = build(args.arch, resolution, dtype, args.attention, dev)
        with autocast():
            per_image = tflops_per_image(model, args.steps, dev)
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

        with torch.no_grad(), autocast():
            reference()  # warm-up of both paths at this size
            ours()
            timings, memory = {"reference": float("inf"), "ours": float("inf")}, {}
            for _ in range(args.repeats):  # alternated, best of each: robust to a busy machine
                for name, fn in (("reference", reference), ("ours", ours)):
                    sync(dev)
                    reset_peak(dev)
                    started = time.perf_counter()
                    fn()
                    sync(dev)
                    timings[name] = min(timings[name], time.perf_counter() - started)
                    memory[name] = peak_gib(dev)
        n = len(requests)
        rates = {name: n / seconds for name, seconds in timings.items()}
        print(f"{resolution:>10} {rates['reference']:>15.1f} {rates['ours']:>11.1f} "
              f"{timings['reference'] / timings['ours']:>6.2f} {memory['reference'] + ' / ' + memory['ours']:>13} "
              f"{mfu(per_image, rates['reference'], peak) + ' / ' + mfu(per_image, rates['ours'], peak):>13} "
              f"{per_image:>11.4g}")


if __name__ == "__main__":
    main()
