"""Speed of the metrics: Inception feature extraction (images/s) and the chunked memorization
search (seconds for N samples against N training images).

    python benchmarks/metrics.py                              # 10,000 x 10,000 on this machine
    python benchmarks/metrics.py --n 50000 --device cuda      # where a GPU is

Inception needs its weights (see scripts/fetch_inception.py); without them that row is skipped.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bench_inception(device: str, num_images: int, batch_size: int, size: int) -> dict | None:
    from chain_of_diffusion.metrics.inception import (
        InceptionWeightsError,
        find_inception_weights,
        inception_features,
        load_inception,
    )

    try:
        model = load_inception(find_inception_weights(None), device)
    except InceptionWeightsError as err:
        print(f"inception: skipped ({err})")
        return None
    images = torch.randint(0, 256, (num_images, 3, size, size), dtype=torch.uint8)
    inception_features(model, images[:batch_size], batch_size=batch_size)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    inception_features(model, images, batch_size=batch_size)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"images": num_images, "batch_size": batch_size, "input_size": size, "seconds": round(seconds, 2),
            "images_per_s": round(num_images / seconds, 1)}


def bench_memorization(device: str, n: int, dim: int) -> dict:
    from chain_of_diffusion.metrics.neighbors import memorization_ratio

    g = torch.Generator().manual_seed(0)
    train = torch.rand(n, dim, generator=g).to(device)
    samples = torch.rand(n, dim, generator=g).to(device)
    start = time.perf_counter()
    ratio = memorization_ratio(samples, train)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"n": n, "dim": dim, "seconds": round(time.perf_counter() - start, 2), "ratio": ratio}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=10_000, help="samples and training images of the memorization search")
    p.add_argument("--dim", type=int, default=768, help="feature dim (768 = 16x16 RGB pixels)")
    p.add_argument("--inception-images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=32, help="input side (Inception resizes to 299 anyway)")
    args = p.parse_args()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                   f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'no GPU'}",
        "torch": torch.__version__,
        "inception": bench_inception(args.device, args.inception_images, args.batch_size, args.size),
        "memorization": bench_memorization(args.device, args.n, args.dim),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
