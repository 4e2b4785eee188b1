"""LoRA training throughput: our trainer (encodings cached once) against diffusers' script loop.

    python benchmarks/train_step.py                        # tiny_sd at 32x32 and 64x64, CPU
    python benchmarks/train_step.py --arch sd15 --resolution 512 --batch-size 8 --precision bf16 --attention xformers

The reference is the loop of diffusers' ``examples/text_to_image/train_text_to_image_lora.py``:
every step runs the VAE encoder on the pixel batch (``latent_dist.sample()``) and the text
encoder on the tokenized captions, then the LoRA UNet forward/backward and AdamW. Ours is the
chain's path: the images and captions are encoded once into the content-hash cache (that time is
counted), then ``train_denoiser`` trains on the cached tensors. Same model, same LoRA config,
same batch size, same number of optimizer steps; both in this process, one after the other.
Prints images/s for both, the ratio, the peak memory of each and their model FLOPs utilisation (per
image: the LoRA UNet's forward and backward, counted once; the reference's VAE and text encoder runs
are work ours does not repeat, so they are not model FLOPs; see measure.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from measure import DTYPES, device, mfu, peak_gib, peak_tflops, reset_peak, sync, tflops_of


def make_model(arch: str, resolution: int, cfg, dtype: torch.dtype = torch.float32, attention: str = "sdpa"):
    """The model with its frozen weights in ``dtype`` and a LoRA in fp32, as diffusers' script holds it."""
    from chain_of_diffusion.config import ModelConfig
    from chain_of_diffusion.models.build import build_model, set_attention
    from chain_of_diffusion.models.lora import add_lora

    model = build_model(ModelConfig(arch=arch), resolution, seed=0)
    if dtype != torch.float32:
        model.to(dtype)
    add_lora(model.unet, cfg, seed=0)
    set_attention(model.unet, attention, device())
    return model


def tflops_per_image(model, dev: torch.device) -> float:
    """One training image's model FLOPs: the LoRA UNet's forward and backward (frozen base: no weight grads)."""
    model.to(dev)
    latent = torch.randn(1, *model.sample_shape, device=dev)
    text = torch.randn(1, 77, model.text_encoder.config.hidden_size, device=dev)
    t = torch.tensor([500], device=dev)
    flops = tflops_of(lambda: model.unet(latent, t, text).sample.float().square().mean().backward())
    model.unet.zero_grad(set_to_none=True)
    return flops


def make_data(num_images: int, resolution: int):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(num_images, 3, resolution, resolution, generator=g) * 2 - 1
    captions = [f"a handwritten digit {d}" for d in ("zero", "one", "two", "three", "four",
                                                     "five", "six", "seven", "eight", "nine")]
    return images, [captions[i % len(captions)] for i in range(num_images)]


def reference_loop(model, images, captions, cfg, device) -> float:
    """diffusers' LoRA script: VAE + text encoder every step. Returns seconds."""
    model.to(device)
    params = [p for p in model.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    sched = model.noise_scheduler
    g = torch.Generator().manual_seed(1)
    model.unet.train()
    sync(device)
    started = time.perf_counter()
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=g)
        pixels = images[idx].to(device)
        latents = model.vae.encode(pixels).latent_dist.sample() * model.vae.config.scaling_factor
        ids = model.tokenizer([captions[i] for i in idx.tolist()], padding="max_length", max_length=77,
                              truncation=True, return_tensors="pt").input_ids.to(device)
        emb = model.text_encoder(ids, return_dict=False)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch_size,), device=device)
        noisy = sched.add_noise(latents, noise, t)
        pred = model.unet(noisy, t, emb, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
    sync(device)
    return time.perf_counter() - started


def our_loop(model, images, captions, cfg, device) -> tuple[float, float]:
    """Encode once through the content-hash cache, then train_denoiser. Returns (total s, encode s)."""
    from accelerate import Accelerator

    from chain_of_diffusion.models.build import encode_captions, encode_images
    from chain_of_diffusion.models.cache import EncodingCache, text_key
    from chain_of_diffusion.train import TrainData, train_denoiser

    model.to(device)
    unique = sorted(set(captions))
    with tempfile.TemporaryDirectory() as tmp:
        sync(device)
        started = time.perf_counter()
        cache = EncodingCache(Path(tmp) / "cache")
        image_keys = [f"img-{i}" for i in range(len(images))]
        cache.fill(image_keys, lambda pos: encode_images(model, images[pos].to(device)))
        text_keys = [text_key(c) for c in unique + [""]]
        cache.fill(text_keys, lambda pos: encode_captions(model, [(unique + [""])[i] for i in pos]))
        x0, emb = cache.load(image_keys), cache.load(text_keys)
        encoded = time.perf_counter() - started
        data = TrainData(x0=x0, caption_index=torch.tensor([unique.index(c) for c in captions]),
                         caption_embeddings=emb[:-1], empty_embedding=emb[-1:])
        train_denoiser(model.unet, model.noise_scheduler, data, cfg, seed=0,
                       accelerator=Accelerator(cpu=device.type == "cpu", mixed_precision=cfg.mixed_precision),
                       checkpoint_dir=Path(tmp) / "ckpt")
        sync(device)
        return time.perf_counter() - started, encoded


def main() -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    from chain_of_diffusion.config import TrainConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="tiny_sd")
    p.add_argument("--resolution", type=int, nargs="+", default=[32, 64])
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", choices=sorted(DTYPES), default="fp32",
                   help="frozen weights' dtype and autocast (train.mixed_precision for ours)")
    p.add_argument("--attention", choices=["sdpa", "xformers"], default="sdpa")
    p.add_argument("--peak-tflops", type=float, help="the device's dense peak, where measure.py does not know it")
    args = p.parse_args()
    dev, dtype = device(), DTYPES[args.precision]
    peak = peak_tflops(dev, dtype, args.peak_tflops)
    cfg = TrainConfig(mode="lora", init="base", steps=args.steps, batch_size=args.batch_size, lr=1e-4,
                      lr_warmup_steps=0, ema_decay=0.0, checkpoint_every=10**9, log_every=10**9,
                      mixed_precision="no" if args.precision == "fp32" else args.precision)
    print(f"device {dev} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.arch}, {args.num_images} images, batch {args.batch_size}, "
          f"{args.steps} steps ({args.steps * args.batch_size / args.num_images:.1f} epochs), {args.precision}, "
          f"{args.attention}; peak {peak} TFLOP/s")
    print(f"{'resolution':>10} {'reference img/s':>16} {'ours img/s':>11} {'ours encode s':>14} {'ratio':>6} "
          f"{'peak GiB':>13} {'MFU':>13} {'TFLOPs/img':>11}")

    def autocast():
        return torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32)

    def model():
        return make_model(args.arch, resolution, cfg, dtype, args.attention)

    for resolution in args.resolution:
        images, captions = make_data(args.num_images, resolution)
        seen = args.steps * args.batch_size
        with autocast():
            per_image = tflops_per_image(model(), dev)
            reference_loop(model(), images, captions, cfg.__class__(**{**cfg.__dict__, "steps": 2}), dev)  # warm-up
        # alternate the two and keep each one's best: another process on the machine slows
        # whichever runs at that moment, not one of them systematically
        refs, ours_runs, memory = [], [], {}
        for _ in range(args.repeats):
            reset_peak(dev)
            with autocast():  # as accelerate's mixed precision runs the script's forward
                refs.append(reference_loop(model(), images, captions, cfg, dev))
            memory["reference"] = peak_gib(dev)
            reset_peak(dev)
            ours_runs.append(our_loop(model(), images, captions, cfg, dev))  # its accelerator autocasts
            memory["ours"] = peak_gib(dev)
        ref = min(refs)
        ours, encode = min(ours_runs)
        print(f"{resolution:>10} {seen / ref:>16.1f} {seen / ours:>11.1f} {encode:>14.2f} {ref / ours:>6.2f} "
              f"{memory['reference'] + ' / ' + memory['ours']:>13} "
              f"{mfu(per_image, seen / ref, peak) + ' / ' + mfu(per_image, seen / ours, peak):>13} {per_image:>11.4g}")


if __name__ == "__main__":
    main()
