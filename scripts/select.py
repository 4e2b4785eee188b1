#!/usr/bin/env python
"""Curate any imagefolder data set with the chain's selectors.

    python scripts/select.py --in samples/ --out curated/ --method greedy_entropy --budget 500 --features pixels
    python scripts/select.py --in samples/ --out curated/ --method threshold_decay --budget 500 \
        --features inception --set metrics.inception_weights=pt_inception.pth

Reads ``--in`` in every form the chain's ``imagefolder`` and ``csv`` sources read: an image set
(image files + ``metadata.jsonl``), a folder of images each with a same-named ``.txt`` caption, or
a CSV of image paths and captions (columns ``--set data.image_column=...``,
``data.caption_column``, ``data.label_column`` as in a chain config). Picks ``--budget`` images
and writes them with their metadata (plus ``score``: the rank at which each was picked) as a new
image set in ``--out``. Feature spaces: ``pixels`` (every image brought to 32x32), ``inception``,
``clip``, ``dinov2`` (where their weights exist; set them with ``--set metrics.KEY=VALUE`` as in
``scripts/evaluate.py``). Bad input prints one line and exits 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "select":
    # Python puts a script's folder first on sys.path, so a sibling script's ``import select``
    # (subprocess, selectors and asyncio do it) finds this file: hand over the standard library's
    # module instead, and the import that got here gets that one (it reads sys.modules afterwards).
    import importlib.machinery
    import importlib.util

    _here = Path(__file__).resolve().parent
    _spec = importlib.machinery.PathFinder.find_spec(
        "select", [p for p in sys.path if Path(p or ".").resolve() != _here]
    )
    _stdlib_select = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_stdlib_select)
    sys.modules["select"] = _stdlib_select

import argparse
import shutil

EXIT_BAD_INPUT = 2
SIZE = 32  # pixel features: every image brought to SIZE x SIZE, as the chain's data sources do
SPACES = ("pixels", "inception", "clip", "dinov2")
METHODS = ("random", "greedy_entropy", "threshold_decay")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="select.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--in", dest="src", required=True,
                   help="input: image set (folder with metadata.jsonl), folder of images with .txt captions, or CSV")
    p.add_argument("--out", required=True, help="output folder (must not exist)")
    p.add_argument("--method", default="greedy_entropy", help=" | ".join(METHODS))
    p.add_argument("--budget", type=int, required=True, help="number of images to keep")
    p.add_argument("--features", default="pixels", help="feature space for distances: " + " | ".join(SPACES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tau0", type=float, default=None, help="threshold_decay: start threshold (default: median NN distance)")
    p.add_argument("--alpha", type=float, default=0.9, help="threshold_decay: tau <- alpha * tau")
    p.add_argument("--decay-when", default="empty_pass", choices=["empty_pass", "every_pass"])
    p.add_argument("--pass-size", type=int, default=None,
                   help="threshold_decay: candidates per pass (default: the budget)")
    p.add_argument("--set", action="append", default=[], metavar="metrics.KEY=VALUE",
                   help="weights of the learned spaces, e.g. metrics.inception_weights=FILE, metrics.clip_pretrained=FILE; "
                   "data.KEY=VALUE for how --in is read, e.g. data.caption_column=caption")
    return p


def _config(overrides: list[str]):
    """The chain config with the ``--set metrics.KEY=VALUE`` / ``data.KEY=VALUE`` overrides."""
    from chain_of_diffusion.config import ConfigError, load_config

    for item in overrides:
        if not item.startswith(("metrics.", "data.")) or "=" not in item:
            raise ConfigError(f"--set {item!r}: only metrics.KEY=VALUE and data.KEY=VALUE overrides apply here")
    return load_config([], overrides)


def _read_input(src: Path, data_cfg):
    """(folder the records' ``file_name`` are relative to, records, pixel-space images or None).

    An image set is read with its metadata as it is (provenance kept); a folder of images with
    ``.txt`` captions and a CSV are read by the chain's own ``imagefolder`` / ``csv`` sources, whose
    images come at the pixel space's size."""
    import dataclasses
    import logging

    from chain_of_diffusion.data.imageset import METADATA, read_metadata
    from chain_of_diffusion.data.sources import load_source

    if not src.exists():
        raise ValueError(f"--in {src}: folder does not exist")
    if src.is_dir() and (src / METADATA).is_file():
        return src, read_metadata(src), None
    source = "imagefolder" if src.is_dir() else "csv"
    cfg = dataclasses.replace(data_cfg, source=source, path=str(src), resolution=SIZE, max_images=None)
    sources_log = logging.getLogger("chain_of_diffusion.data.sources")
    level = sources_log.level
    sources_log.setLevel(logging.ERROR)  # not "upscaled to data.resolution=32": every image is, for pixels
    try:
        data = load_source(cfg)  # DataError (a ValueError) names the file and the data.KEY
    finally:
        sources_log.setLevel(level)
    base = src if src.is_dir() else src.parent
    records = []
    for ex in data.examples:
        path = Path(ex.origin)
        name = path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path.resolve())
        records.append({"file_name": name, "text": ex.text, **({"label": ex.label} if ex.label is not None else {})})
    return base, records, [ex.image for ex in data.examples]


def _features(src: Path, records: list[dict], space: str, mcfg, pixels=None):
    """(N, D) features of the image set's images in ``space`` (``pixels``: the images already
    brought to the pixel space's size, where the reader decoded them)."""
    from chain_of_diffusion.data.imageset import image_path, pil_to_tensor
    from chain_of_diffusion.data.sources.common import one_line, read_image_file
    from chain_of_diffusion.data.transforms import to_resolution, to_rgb

    if space == "pixels" and pixels is not None:
        return pil_to_tensor(pixels).flatten(1)
    images = []
    for record in records:
        path = image_path(src, record)
        try:
            image = read_image_file(path)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
            raise ValueError(f"{path}: cannot read image ({one_line(err)})") from None
        # the chain's pixel conventions (16-bit greyscale scaled, alpha onto white)
        images.append(to_resolution(image, SIZE) if space == "pixels" else to_rgb(image))
    if space == "pixels":
        return pil_to_tensor(images).flatten(1)
    from accelerate import PartialState

    from chain_of_diffusion.metrics.suite import FeatureSpaces

    device = PartialState().device  # devices come from accelerate, never from torch.cuda directly
    # images keep their own sizes: each extractor resizes as its metric does (Inception to 299, ...)
    return FeatureSpaces(mcfg, device=device)(space, [pil_to_tensor([im])[0] for im in images])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    from chain_of_diffusion.config import ConfigError
    from chain_of_diffusion.data.imageset import ImageSetError, image_path, write_metadata
    from chain_of_diffusion.select import select_indices

    src, out = Path(args.src), Path(args.out)
    try:
        if args.method not in METHODS:
            raise ValueError(f"--method {args.method!r}: not one of {', '.join(METHODS)}")
        if args.features not in SPACES:
            raise ValueError(f"--features {args.features!r}: not one of {', '.join(SPACES)}")
        if out.exists():
            raise ValueError(f"{out}: already exists; choose a new --out folder")
        config = _config(args.set)
        mcfg = None
        if args.features != "pixels":
            from chain_of_diffusion.preflight import check_space_weights

            mcfg = config.metrics
            check_space_weights(args.features, mcfg)  # files only, before any image is read
        base, records, pixels = _read_input(src, config.data)
        if not records:
            raise ValueError(f"{src}/metadata.jsonl: no images")
        if not 1 <= args.budget <= len(records):
            raise ValueError(f"--budget {args.budget}: must be between 1 and the {len(records)} images in {src}")
        features = _features(base, records, args.features, mcfg, pixels)
        options = {}
        if args.method == "threshold_decay":
            options = {"tau0": args.tau0, "alpha": args.alpha, "decay_when": args.decay_when,
                       "pass_size": args.pass_size}
        order = select_indices(args.method, features, args.budget, seed=args.seed, **options).tolist()
    except (ValueError, ImageSetError, ConfigError, FileNotFoundError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"select.py: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
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
        shutil.copyfile(image_path(base, record), tmp / name)
        kept.append({**record, "file_name": name, "score": rank})
    write_metadata(tmp, sorted(kept, key=lambda r: r["file_name"]))
    tmp.rename(out)
    print(f"kept {len(kept)} of {len(records)} images ({args.method}, {args.features}) in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
