"""What a generation puts on the Hub, file by file: the model folder, grid, metrics and a shareable config
under ``gen_XX/``, and how to tell whether the Hub already holds a file's exact bytes (its LFS sha256 or git
blob id), so that an unchanged generation makes no commit. :mod:`chain_of_diffusion.hub` pushes them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from chain_of_diffusion.config import ChainConfig
from chain_of_diffusion.runs import RunDir


def folder_name(generation: int) -> str:
    return f"gen_{generation:02d}"


def revision_name(generation: int) -> str:
    return f"gen-{generation:02d}"


def _git_oid(path: Path) -> str:
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def same_bytes(local: Path | bytes, remote) -> bool:
    """Whether the remote file (a RepoFile) holds exactly these bytes: its LFS sha256, else its git oid."""
    if remote is None:
        return False
    if isinstance(local, bytes):
        if remote.lfs is not None:
            return hashlib.sha256(local).hexdigest() == remote.lfs.sha256
        return hashlib.sha1(b"blob %d\0" % len(local) + local).hexdigest() == remote.blob_id
    if remote.size != local.stat().st_size:
        return False
    return (_sha256(local) == remote.lfs.sha256) if remote.lfs is not None else _git_oid(local) == remote.blob_id


def model_files(run: RunDir, generation: int) -> dict[str, Path]:
    """The generation's model folder (a LoRA file, or unet/ text_encoder/ tokenizer/ scheduler/ [vae/]), by
    path inside it; hidden leftovers are not part of it."""
    folder = run.stage_path(generation, "model")
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def generation_files(run: RunDir, cfg: ChainConfig, generation: int) -> dict[str, Path | bytes]:
    """What lands under ``gen_XX/``: the model files, grid (hub.push_samples=grid), metrics.json, config.yaml."""
    folder = folder_name(generation)
    files = {f"{folder}/{rel}": path for rel, path in model_files(run, generation).items()}
    grid = run.gen(generation) / "grid.png"
    if cfg.hub.push_samples in ("grid", "all") and grid.is_file():
        files[f"{folder}/grid.png"] = grid
    metrics = run.gen(generation) / "metrics.json"
    if not metrics.is_file():
        metrics = run.stage_path(generation, "evaluation") / "metrics.json"
    files[f"{folder}/metrics.json"] = metrics
    files[f"{folder}/config.yaml"] = shareable_config(run.config_path)
    lora = run.stage_path(generation, "model") / "pytorch_lora_weights.safetensors"
    if lora.is_file():  # the same adapter for ComfyUI / the A1111 web UI
        from chain_of_diffusion.models.lora import kohya_bytes

        files[f"{folder}/{KOHYA_FILE}"] = kohya_bytes(lora.parent)
    return files


KOHYA_FILE = "kohya_lora.safetensors"  # the LoRA in kohya's key format, beside the diffusers one

# keys whose values may be paths on the machine that ran the chain
_PATH_KEYS = (("output_dir",), ("data", "path"), ("model", "pretrained"), ("sample", "captions"),
              ("metrics", "inception_weights"), ("metrics", "clip_pretrained"), ("metrics", "dinov2_model"))


def shareable_config(config_path: Path) -> bytes:
    """The run's resolved config with every local path cut to its last part (``/home/me/data/cats`` ->
    ``cats``): where the run's machine kept its files is no one else's business and fits no other machine."""
    import yaml

    cfg = yaml.safe_load(Path(config_path).read_text())
    cut = []
    for keys in _PATH_KEYS:
        parent = cfg
        for key in keys[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        value = parent.get(keys[-1]) if isinstance(parent, dict) else None
        if isinstance(value, str) and (Path(value).is_absolute() or Path(value).expanduser().exists()):
            parent[keys[-1]] = Path(value).name
            cut.append(".".join(keys))
    header = f"# local paths cut to their last part: {', '.join(cut)}\n" if cut else ""
    return (header + yaml.safe_dump(cfg, sort_keys=False)).encode()
