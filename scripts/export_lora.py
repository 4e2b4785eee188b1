#!/usr/bin/env python
"""Export a generation's LoRA to the kohya / A1111 key format, for ComfyUI and the A1111 web UI.

    python scripts/export_lora.py runs/sd15/gen_03/model --out gen03.safetensors

The chain saves each generation's LoRA in the diffusers format (``gen_XX/model/
pytorch_lora_weights.safetensors``), which diffusers' ``load_lora_weights`` reads. ComfyUI and
A1111 expect kohya's names (``lora_unet_..._to_q.lora_down.weight`` plus an ``alpha`` per module);
the conversion is diffusers' own ``convert_state_dict_to_kohya``. Bad input prints one line and
exits 2; an existing ``--out`` is never overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a generation's model folder (gen_XX/model) or its .safetensors file")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    src, out = Path(args.model), Path(args.out)
    folder = src.parent if src.is_file() else src
    if not (folder / "pytorch_lora_weights.safetensors").is_file():
        print(f"error: {folder}: no pytorch_lora_weights.safetensors (not a LoRA generation of a chain)",
              file=sys.stderr)
        return 2
    if out.exists() and not args.force:
        print(f"error: {out} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    if out.suffix != ".safetensors":
        print(f"error: {out}: the output must be a .safetensors file", file=sys.stderr)
        return 2

    from safetensors.torch import save_file

    from chain_of_diffusion.models.lora import KOHYA_METADATA, kohya_state
    from chain_of_diffusion.runs import atomic_replace

    try:
        kohya = kohya_state(folder)
    except (ValueError, OSError) as err:
        print(f"error: {folder}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    with atomic_replace(out) as tmp:
        save_file(kohya, str(tmp), metadata=KOHYA_METADATA)
    modules = sum(1 for k in kohya if k.endswith(".alpha"))
    print(f"wrote {out}: {modules} LoRA modules in kohya format")
    return 0


if __name__ == "__main__":
    sys.exit(main())
