#!/usr/bin/env python
"""Curate any imagefolder data set with the chain's selectors.

(Not ``select.py``: a script of that name shadows the standard library's ``select`` module for
every script in the same folder, since Python puts the script's folder first on the import path.)

    python scripts/select_images.py --in samples/ --out curated/ --method greedy_entropy --budget 500 --features pixels

Reads ``--in`` (PNG/JPEG files + ``metadata.jsonl``), picks ``--budget`` images, and writes them
with their metadata (plus ``score``: the rank at which each was picked) as a new image set in
``--out``. Bad input prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

SIZE = 32  # pixel features: every image brought to SIZE x SIZE, as the chain's data sources do


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--in", dest="src", required=True, help="input image set (folder with metadata.jsonl)")
    p.add_argument("--out", required=True, help="output folder (must not exist)")
    p.add_argument("--method", default="greedy_entropy", help="random | greedy_entropy | threshold_decay")
    p.add_argument("--budget", type=int, required=True, help="number of images to keep")
    p.add_argument("--features", default="pixels", choices=["pixels"], help="feature space for distances")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tau0", type=float, default=None)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--decay-when", default="empty_pass", choices=["empty_pass", "every_pass"])
    p.add_argument("--pass-size", type=int, default=None,
                   help="threshold_decay: candidates per pass (default: the budget)")
    args = p.parse_args(argv)

    from PIL import Image

    from chain_of_diffusion.data.imageset import (
        ImageSetError,
        image_path,
        pil_to_tensor,
        read_metadata,
        write_metadata,
    )
    from chain_of_diffusion.data.transforms import to_resolution
    from chain_of_diffusion.select import select_indices

    src, out = Path(args.src), Path(args.out)
    try:
        if out.exists():
            raise ValueError(f"{out}: already exists; choose a new --out folder")
        records = read_metadata(src)
        if not records:
            raise ValueError(f"{src}/metadata.jsonl: no images")
        images = []
        for record in records:
            path = image_path(src, record)
            try:
                with Image.open(path) as im:
                    images.append(to_resolution(im, SIZE))
            except OSError as err:
                raise ValueError(f"{path}: cannot read image ({err})") from None
        features = pil_to_tensor(images).flatten(1)
        options = {}
        if args.method == "threshold_decay":
            options = {"tau0": args.tau0, "alpha": args.alpha, "decay_when": args.decay_when,
                       "pass_size": args.pass_size}
        order = select_indices(args.method, features, args.budget, seed=args.seed, **options).tolist()
    except (ValueError, ImageSetError) as err:
        print(f"select_images.py: error: {err}", file=sys.stderr)
        return 2
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kept = []
    names = [Path(records[i]["file_name"]).name for i in order]
    unique = len(set(names)) == len(names)  # files from sub-folders may share a name
    for rank, i in enumerate(order):
        record = dict(records[i])
        path = Path(record["file_name"])
        name = path.name if unique else f"{i:06d}{path.suffix}"
        shutil.copyfile(image_path(src, record), tmp / name)
        kept.append({**record, "file_name": name, "score": rank})
    write_metadata(tmp, sorted(kept, key=lambda r: r["file_name"]))
    tmp.rename(out)
    print(f"kept {len(kept)} of {len(records)} images ({args.method}, {args.features}) in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
