"""What the benchmarks share: the device, its clock and peak memory, model FLOPs and utilisation (MFU).

MFU here is model FLOPs per second over the device's dense peak at the compute dtype: the FLOPs of the
work a method must do (counted once with torch's FlopCounterMode), not of what an implementation
chooses to repeat, so a loop that re-encodes every batch shows a lower MFU than one that caches.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

# dense peak TFLOP/s of the tensor cores by device name and dtype (vendor data sheets, SXM parts)
PEAK_TFLOPS = {
    "H200": {torch.bfloat16: 989.4, torch.float16: 989.4, torch.float32: 494.7},
    "H100": {torch.bfloat16: 989.4, torch.float16: 989.4, torch.float32: 494.7},
    "A100": {torch.bfloat16: 312.0, torch.float16: 312.0, torch.float32: 156.0},
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device() -> torch.device:
    return torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")


def sync(dev: torch.device) -> None:
    if dev.type != "cpu":
        torch.accelerator.synchronize()


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(dev: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if dev.type == "cuda" else "-"


def peak_tflops(dev: torch.device, dtype: torch.dtype, given: float | None = None) -> float | None:
    """The device's dense peak at ``dtype`` (``given`` where the table does not know the device)."""
    if given:
        return given
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((table.get(dtype) for key, table in PEAK_TFLOPS.items() if key in name), None)


def tflops_of(fn) -> float:
    """TFLOPs that ``fn()`` runs, counted by FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e12


def mfu(tflops_per_image: float, images_per_s: float, peak: float | None) -> str:
    return f"{100 * tflops_per_image * images_per_s / peak:.1f}%" if peak else "-"
