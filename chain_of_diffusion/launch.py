"""The processes of one launch: their process-group settings, and the checks that they can work together,
made on every process before any stage (all raise the same one-line error, so no process is left waiting).

accelerate starts and connects the processes (``accelerate launch``, torchrun underneath, on one machine or
several); this module only checks what accelerate cannot: that every process runs the same config with the
same packages, and that every machine sees the same run directory.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Optional

from chain_of_diffusion.config import ChainConfig, diff_keys, to_dict
from chain_of_diffusion.errors import LaunchError

# the packages whose version decides a run's numbers (env.json; compared between processes)
PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "peft", "datasets",
            "safetensors", "omegaconf", "open_clip_torch", "chain-of-diffusion")
MARKERS = ".processes"  # under output_dir: one file per process while the launch starts


def package_versions() -> dict[str, Optional[str]]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def process_group_kwargs(cfg: ChainConfig):
    """accelerate's process-group settings: a collective that waits longer than train.process_timeout_s
    for another process (dead, or hung) raises instead of blocking for torch's default 10-30 min."""
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    return InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.process_timeout_s))


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another process of the launch died or hung
    (gloo raises RuntimeError naming itself or the closed connection, NCCL torch.distributed.DistError)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    import torch.distributed as dist

    signs = ("gloo", "NCCL", "Connection closed by peer", "Connection reset by peer", "Timed out", "timed out")
    return isinstance(err, getattr(dist, "DistError", ())) or (
        isinstance(err, RuntimeError) and any(sign in str(err) for sign in signs))


def leave_process_group() -> None:
    """All processes leave the process group together before any exits. Over several machines the group's
    store lives with machine 0's launcher, which exits once its own processes have: a process of another
    machine still tearing its group down then waits 300 s for the store and aborts (SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def has_accelerator() -> bool:
    """Whether torch sees a GPU (or another accelerator) that accelerate's FSDP and DeepSpeed can use."""
    import torch

    return bool(getattr(torch, "accelerator", None) and torch.accelerator.is_available())


def shards_here() -> bool:
    """Whether accelerate will honour an FSDP or DeepSpeed config in this launch: 1.16 takes them only on
    accelerators (state.py), and on a CPU launch drops the plugin and runs plain DDP without a word."""
    from accelerate.utils import parse_flag_from_env

    return not parse_flag_from_env("ACCELERATE_USE_CPU") and has_accelerator()


def check_accelerate_config(cfg: ChainConfig) -> None:
    """What ``accelerate launch --config_file`` asked for (it tells the processes through ACCELERATE_USE_*),
    checked before any work: FSDP and DeepSpeed where accelerate would not run them, DeepSpeed not installed,
    and what the chain cannot do under them (a full finetune's FSDP-sharded save; RA Reflow's re-inversion,
    split over processes; a second trained module, the text encoder's LoRA, which DeepSpeed's one-model
    prepare refuses)."""
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        if not shards_here():
            raise LaunchError(
                "the accelerate config asks for FSDP but this launch runs on CPU, where accelerate runs plain DDP "
                "instead (it shards only on GPUs); launch with configs/accelerate/ddp.yaml here, fsdp.yaml on GPUs")
        if cfg.train.mode != "lora":
            raise LaunchError(f"train.mode={cfg.train.mode} under FSDP: the chain shards LoRA training only (its "
                              "adapter is gathered and saved whole); launch a full finetune with ddp.yaml or "
                              "deepspeed_zero2.yaml")
        if cfg.mix.refresh_real_pairs_every:
            raise LaunchError("mix.refresh_real_pairs_every under FSDP: re-inverting the real pairs splits them over "
                              "processes, which a sharded model (a collective in every forward) cannot do; launch "
                              "RA Reflow with ddp.yaml")
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        from importlib.util import find_spec

        if find_spec("deepspeed") is None:
            raise LaunchError("the accelerate config asks for DeepSpeed, which is not installed: pip install deepspeed "
                              "(or launch with configs/accelerate/ddp.yaml or fsdp.yaml)")
        if not shards_here():
            raise LaunchError("the accelerate config asks for DeepSpeed, which needs a GPU; launch with "
                              "configs/accelerate/ddp.yaml on a CPU machine")
        if cfg.train.lora_text_encoder:
            raise LaunchError("train.lora_text_encoder=true trains two modules, and DeepSpeed takes one per prepare(); "
                              "train the UNet's LoRA only under DeepSpeed, or launch with fsdp.yaml or ddp.yaml")


def check_launch(accelerator, cfg: Optional[ChainConfig] = None) -> None:
    """Stop when a launcher started several processes that all believe they are rank 0, or when
    the precision asked for cannot run on the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and accelerator.num_processes == 1:
        raise LaunchError(
            f"{world} processes were launched but accelerate sees 1 (each would run the whole chain "
            "as rank 0); on a CPU machine launch with ACCELERATE_USE_CPU=1"
        )
    if cfg is not None and cfg.train.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise LaunchError(
            "train.mixed_precision=fp16 needs a CUDA GPU (CPU autocast has no fp16); use bf16 or no on a CPU"
        )


def check_same_everywhere(accelerator, cfg: ChainConfig) -> None:
    """Every process compares its resolved config and package versions with the main process's: a node
    started with another config file or another diffusers stops the launch (every process, one line
    naming the processes and keys that differ) instead of training a chain no config describes."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import broadcast_object_list, gather_object

    mine = json.loads(json.dumps({"config": to_dict(cfg), "packages": package_versions()}))
    main = broadcast_object_list([mine if accelerator.is_main_process else None])[0]
    differ = gather_object([(accelerator.process_index, socket.gethostname(), diff_keys(main, mine))])
    bad = [(rank, host, keys) for rank, host, keys in differ if keys]
    if bad:
        rank, host, keys = bad[0]
        keys = [k.removeprefix("config.") if k.startswith("config.") else f"the {k.removeprefix('packages.')} version"
                for k in keys]
        raise LaunchError(
            f"process {rank} (on {host}) runs another config or other packages than the main process: "
            f"{', '.join(keys[:6])} differ{' (and more processes)' if len(bad) > 1 else ''}; start every machine "
            "with the same config files, overrides and package versions"
        )


def check_shared_run_dir(accelerator, root: Path) -> None:
    """Every process writes a marker into the run directory and the main process must see them all: a
    launch over machines needs output_dir on a file system they share (the stages hand each other files)."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import broadcast_object_list

    folder = Path(root) / MARKERS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(accelerator.process_index)).write_text(socket.gethostname())
    accelerator.wait_for_everyone()
    missing = None
    if accelerator.is_main_process:
        missing = [r for r in range(accelerator.num_processes) if not (folder / str(r)).is_file()]
    missing = broadcast_object_list([missing])[0]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(folder, ignore_errors=True)
    if missing:
        raise LaunchError(
            f"output_dir={root} is not on a file system every machine shares: the main process cannot see what "
            f"process(es) {', '.join(map(str, missing))} wrote there; put output_dir on a shared file system (NFS, Lustre, ...)"
        )


def env_info(accelerator) -> dict:
    """What the run ran on, for env.json and the report."""
    packages = package_versions()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
        "device": str(accelerator.device),
        "num_processes": accelerator.num_processes,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda" else None,
        "git_commit": commit,
    }
