"""Real captioned images for generation 0: one loader per ``data.source``.

Every loader lists its candidates (origin, a way to decode the image, caption, label) in the
source's natural order and hands them to :func:`_collect`, which applies the shared rules:

* ``data.max_images`` caps the images read; candidates are decoded one by one and decoding stops
  as soon as the cap is reached, so a cap keeps a large source cheap.
* an image that cannot be decoded, or has no caption, raises :class:`DataError` under
  ``data.on_error=error`` and is counted in ``SourceData.skipped`` under ``data.on_error=skip``.
* every image goes through :func:`~chain_of_diffusion.data.transforms.to_resolution`.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from chain_of_diffusion.config import DataConfig
from chain_of_diffusion.data.imageset import METADATA, ImageSetError, read_metadata
from chain_of_diffusion.data.transforms import to_resolution
from chain_of_diffusion.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SKIP_HINT = "set data.on_error=skip to skip such files"



log = logging.getLogger(__name__)


@dataclass
class RealExample:
    image: Image.Image  # RGB, data.resolution square
    text: str  # caption
    label: Optional[int]  # class label where the source has one
    origin: str  # file path, or "<source>:<index>"


@dataclass
class SourceData:
    examples: list[RealExample]
    num_skipped: int = 0  # inputs skipped under data.on_error=skip
    skipped: list[str] = field(default_factory=list)  # "<origin>: <reason>" for each of them
    class_names: Optional[list[str]] = None
    upscaled: list[str] = field(default_factory=list)  # origins of images smaller than data.resolution


@dataclass
class _Candidate:
    origin: str
    decode: Callable[[], Image.Image]  # may raise anything; the image may be any size and mode
    text: Optional[str]
    label: Optional[int] = None
    missing_caption: str = "no caption"  # the reason given when text is empty


def _collect(
    candidates: Iterable[_Candidate], cfg: DataConfig, class_names: Optional[list[str]] = None
) -> SourceData:
    """Decode candidates in order until ``cfg.max_images`` examples are kept, applying on_error."""
    data = SourceData(examples=[], class_names=class_names)
    limit = cfg.max_images

    def bad(message: str) -> None:
        if cfg.on_error != "skip":
            raise DataError(f"{message}; {SKIP_HINT}")
        data.num_skipped += 1
        data.skipped.append(message)

    for cand in candidates:
        if limit is not None and len(data.examples) >= limit:
            break
        text = cand.text.strip() if isinstance(cand.text, str) else None
        if not text:
            bad(f"{cand.origin}: {cand.missing_caption}")
            continue
        try:
            decoded = cand.decode()
            image = to_resolution(decoded, cfg.resolution, cfg.center_crop)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
            bad(f"{cand.origin}: cannot decode image ({_one_line(err)})")
            continue
        short_side = min(decoded.size)
        if cfg.min_size is not None and short_side < cfg.min_size:
            bad(f"{cand.origin}: {decoded.size[0]}x{decoded.size[1]} is smaller than data.min_size={cfg.min_size}")
            continue
        if short_side < cfg.resolution:
            data.upscaled.append(cand.origin)
        data.examples.append(RealExample(image=image, text=text, label=cand.label, origin=cand.origin))
    if data.upscaled:
        log.warning(
            "%d images are smaller than data.resolution=%d and were upscaled (first: %s); set data.min_size "
            "to refuse or skip them", len(data.upscaled), cfg.resolution, data.upscaled[0],
        )
    return data


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _read_image_file(path: Path) -> Image.Image:
    """Open and fully decode, inside the caller's try, so truncated files fail here."""
    with Image.open(path) as im:
        im.load()
        return im.copy()  # closing the file invalidates `im` itself


def _label_mapping(
    values: list[Any], key: str, where: str
) -> tuple[list[Optional[int]], Optional[list[str]]]:
    """Integer labels as they are; other labels become indices into their sorted unique names."""
    present = [v for v in values if v is not None and v != ""]
    if not present:
        return [None] * len(values), None

    def as_int(v: Any) -> Optional[int]:
        if isinstance(v, bool):
            return None
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return int(v.strip())
        return None

    if all(as_int(v) is not None for v in present):
        return [as_int(v) if v is not None and v != "" else None for v in values], None
    if not all(isinstance(v, str) for v in present):
        kinds = sorted({type(v).__name__ for v in present})
        raise DataError(
            f"{where}: label column '{key}' (data.label_column) holds {', '.join(kinds)} values; "
            "expected integers or strings"
        )
    names = sorted(set(present))
    index = {name: i for i, name in enumerate(names)}
    return [index[v] if v in index else None for v in values], names


# --------------------------------------------------------------------------------------- digits


def load_digits_source(cfg: DataConfig) -> SourceData:
    """scikit-learn's bundled 8x8 digits: white strokes on black, values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    targets = bunch.target

    def candidates() -> Iterator[_Candidate]:
        for i in range(len(pixels)):
            digit = int(targets[i])
            yield _Candidate(
                origin=f"digits:{i}",
                decode=lambda a=pixels[i]: Image.fromarray(a, mode="L"),
                text=f"a handwritten digit {NUMBER_WORDS[digit]}",
                label=digit,
            )

    return _collect(candidates(), cfg, class_names=[str(d) for d in range(10)])


# ---------------------------------------------------------------------------------- imagefolder


def _existing_path(cfg: DataConfig, kind: str) -> Path:
    if not cfg.path:
        raise DataError(f"data.path: required for data.source={cfg.source}")
    path = Path(cfg.path).expanduser()
    if kind == "folder" and not path.is_dir():
        raise DataError(f"data.path: folder does not exist: {path}")
    if kind == "file" and not path.is_file():
        raise DataError(f"data.path: file does not exist: {path}")
    return path


def _caption_of(record: dict, key: str) -> Optional[str]:
    value = record.get(key)
    return value if isinstance(value, str) else None


def load_imagefolder_source(cfg: DataConfig) -> SourceData:
    """A folder with ``metadata.jsonl`` (``file_name`` + caption column), or image files each
    with a same-named ``.txt`` caption next to it (sorted, recursive)."""
    folder = _existing_path(cfg, "folder")
    if (folder / METADATA).is_file():
        try:
            records = read_metadata(folder)
        except ImageSetError as err:
            raise DataError(str(err)) from None
        labels: list[Optional[int]] = [None] * len(records)
        class_names = None
        if cfg.label_column:
            labels, class_names = _label_mapping(
                [r.get(cfg.label_column) for r in records], cfg.label_column, str(folder / METADATA)
            )
        cands = (
            _Candidate(
                origin=str(folder / r["file_name"]),
                decode=lambda p=folder / r["file_name"]: _read_image_file(p),
                text=_caption_of(r, cfg.caption_column),
                label=label,
                missing_caption=f"no caption (no '{cfg.caption_column}' in its {METADATA} record)",
            )
            for r, label in zip(records, labels)
        )
        data = _collect(cands, cfg, class_names)
    else:
        files = sorted(
            (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
            key=lambda p: p.relative_to(folder).as_posix(),
        )
        if not files:
            raise DataError(
                f"{folder}: no images found (looked for {METADATA}, or {', '.join(IMAGE_EXTENSIONS)} "
                "files with .txt captions)"
            )

        def txt_caption(path: Path) -> Optional[str]:
            txt = path.with_suffix(".txt")
            return txt.read_text(encoding="utf-8") if txt.is_file() else None

        cands = (
            _Candidate(
                origin=str(p),
                decode=lambda p=p: _read_image_file(p),
                text=txt_caption(p),
                missing_caption=f"no caption (missing or empty {p.with_suffix('.txt').name})",
            )
            for p in files
        )
        data = _collect(cands, cfg)
    return data


# ------------------------------------------------------------------------------------------ csv


def load_csv_source(cfg: DataConfig) -> SourceData:
    """A CSV with an image path column (relative to the CSV's folder, or absolute) and a caption
    column."""
    path = _existing_path(cfg, "file")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    for key, name in (("data.image_column", cfg.image_column), ("data.caption_column", cfg.caption_column)):
        if name not in columns:
            raise DataError(
                f"{path}: no column '{name}' ({key}); columns present: {', '.join(columns) or '(none)'}"
            )
    labels: list[Optional[int]] = [None] * len(rows)
    class_names = None
    if cfg.label_column:
        if cfg.label_column not in columns:
            raise DataError(
                f"{path}: no column '{cfg.label_column}' (data.label_column); "
                f"columns present: {', '.join(columns)}"
            )
        labels, class_names = _label_mapping(
            [row.get(cfg.label_column) for row in rows], cfg.label_column, str(path)
        )

    def candidates() -> Iterator[_Candidate]:
        for line_no, (row, label) in enumerate(zip(rows, labels), 2):
            ref = (row.get(cfg.image_column) or "").strip()
            if not ref:
                yield _Candidate(
                    origin=f"{path}:{line_no}",
                    decode=lambda: _raise(ValueError(f"empty '{cfg.image_column}'")),
                    text=row.get(cfg.caption_column),
                    label=label,
                )
                continue
            image = Path(ref).expanduser()
            image = image if image.is_absolute() else path.parent / image
            yield _Candidate(
                origin=str(image),
                decode=lambda p=image: _read_image_file(p),
                text=row.get(cfg.caption_column),
                label=label,
                missing_caption=f"no caption (empty '{cfg.caption_column}' in {path.name} line {line_no})",
            )

    return _collect(candidates(), cfg, class_names)


def _raise(err: Exception) -> Image.Image:
    raise err


# ------------------------------------------------------------------------------------------- hf


_HF_FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _open_hf_dataset(cfg: DataConfig):
    """The split as a ``datasets.Dataset``; any failure becomes one DataError line."""
    import datasets

    if not cfg.path:
        raise DataError("data.path: required for data.source=hf")
    local = Path(cfg.path).expanduser()
    saved = local.is_dir() and any(
        (local / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")
    )
    try:
        if saved:
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if cfg.split not in ds:
                    raise DataError(
                        f"data.split: {cfg.split!r} is not a split of {local}; splits: {', '.join(ds)}"
                    )
                ds = ds[cfg.split]
        elif local.is_file() and local.suffix.lower() in _HF_FILE_BUILDERS:
            builder = _HF_FILE_BUILDERS[local.suffix.lower()]
            ds = datasets.load_dataset(builder, data_files={cfg.split: str(local)}, split=cfg.split)
        else:
            ds = datasets.load_dataset(str(local) if local.exists() else cfg.path, split=cfg.split)
    except DataError:
        raise
    except Exception as err:  # datasets raises many types: not found, offline, bad split, bad files
        raise DataError(
            f"data.path: {cfg.path}: dataset split {cfg.split!r} is not available offline "
            f"(not in the local Hugging Face cache, nor a local dataset folder): {_one_line(err)}"
        ) from None
    return ds


def _decode_hf_image(value: Any, base: Optional[Path]) -> Image.Image:
    """A row's image, whatever form the column holds: undecoded {bytes, path}, a path, or PIL."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            with Image.open(io.BytesIO(value["bytes"])) as im:
                im.load()
                return im.copy()
        if value.get("path"):
            return _read_image_file(Path(value["path"]))
    if isinstance(value, str):
        path = Path(value)
        if not path.is_absolute() and base is not None:
            path = base / path
        return _read_image_file(path)
    raise ValueError(f"unsupported image value of type {type(value).__name__}")


def load_hf_source(cfg: DataConfig) -> SourceData:
    """A ``datasets`` dataset: a saved dataset folder (``save_to_disk``), a local data folder, or a
    Hub name already in the local cache; columns from data.image_column / caption_column /
    label_column."""
    import datasets

    ds = _open_hf_dataset(cfg)
    columns = list(ds.column_names)
    for key, name in (("data.image_column", cfg.image_column), ("data.caption_column", cfg.caption_column)):
        if name not in columns:
            raise DataError(f"{cfg.path}: no column '{name}' ({key}); columns present: {', '.join(columns)}")
    wanted = [cfg.image_column, cfg.caption_column]
    labels: list[Optional[int]] = [None] * len(ds)
    class_names = None
    if cfg.label_column:
        if cfg.label_column not in columns:
            raise DataError(
                f"{cfg.path}: no column '{cfg.label_column}' (data.label_column); "
                f"columns present: {', '.join(columns)}"
            )
        feature = ds.features[cfg.label_column]
        values = ds[cfg.label_column]
        if isinstance(feature, datasets.ClassLabel):
            labels, class_names = [None if v is None else int(v) for v in values], list(feature.names)
        else:
            labels, class_names = _label_mapping(values, cfg.label_column, str(cfg.path))
    # decode ourselves, row by row, so one broken image is one skipped row and a cap stays cheap
    if isinstance(ds.features[cfg.image_column], datasets.Image):
        ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))
    ds = ds.select_columns(wanted)
    # image paths stored as strings are relative to the dataset folder or file, like csv's
    local = Path(cfg.path).expanduser()
    base = local if local.is_dir() else local.parent if local.is_file() else None

    def candidates() -> Iterator[_Candidate]:
        for i, (row, label) in enumerate(zip(ds, labels)):
            value = row[cfg.image_column]
            file = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
            origin = str(file) if file else f"hf:{cfg.path}:{cfg.split}:{i}"
            yield _Candidate(
                origin=origin,
                decode=lambda v=value: _decode_hf_image(v, base),
                text=row[cfg.caption_column],
                label=label,
                missing_caption=f"no caption (empty '{cfg.caption_column}' in row {i})",
            )

    return _collect(candidates(), cfg, class_names)


# ---------------------------------------------------------------------------------------- emoji

EMOJI_FONT_PATHS = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",  # Debian, Ubuntu
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",  # Arch
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",  # Fedora
    "/usr/share/fonts/truetype/NotoColorEmoji.ttf",
)
EMOJI_FONT_SIZE = 109  # CBDT bitmap strikes load only at their own size


def _emoji_font_path(cfg: DataConfig) -> Path:
    candidates = [cfg.path] if cfg.path else list(EMOJI_FONT_PATHS)
    for candidate in candidates:
        if Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser()
    raise DataError(
        "data.source=emoji needs the Noto Color Emoji font: apt-get install fonts-noto-color-emoji "
        f"(looked in {', '.join(str(c) for c in candidates)})"
    )


def _emoji_caption(chars: str, name: str) -> str:
    """':red_apple:' -> 'red apple emoji'; flags, named by country alone, read 'flag of Japan emoji'."""
    words = name.strip(":").replace("_", " ")
    return f"flag of {words} emoji" if _is_flag(chars) else f"{words} emoji"


def _is_flag(chars: str) -> bool:
    # regional-indicator pairs, and the black flag + tag sequences (England, Scotland, Wales)
    return all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in chars) or (
        chars.startswith("\U0001f3f4") and any(0xE0020 <= ord(c) <= 0xE007F for c in chars)
    )


def _emoji_candidates(raqm: bool) -> list[tuple[str, str]]:
    """(characters, caption) for each fully-qualified emoji, in the ``emoji`` package's order.

    Without raqm, Pillow lays out one codepoint per glyph, so only single-codepoint emoji (an
    optional trailing U+FE0F aside) can come out as one picture.
    """
    import emoji

    fully_qualified = emoji.STATUS["fully_qualified"]
    out = []
    for chars, info in emoji.EMOJI_DATA.items():
        if info.get("status") != fully_qualified:
            continue
        if not raqm and len(chars.replace("\ufe0f", "")) != 1:
            continue
        out.append((chars, _emoji_caption(chars, info["en"])))
    return out


class _EmojiRenderer:
    """Draws one emoji as a white-background RGB square (glyph bbox, padded), or None."""

    def __init__(self, font_path: Path):
        from PIL import ImageDraw, ImageFont, features

        self.raqm = bool(features.check("raqm"))
        layout = ImageFont.Layout.RAQM if self.raqm else ImageFont.Layout.BASIC
        try:
            self.font = ImageFont.truetype(str(font_path), EMOJI_FONT_SIZE, layout_engine=layout)
        except OSError as err:
            raise DataError(
                f"{font_path}: cannot load the emoji font at size {EMOJI_FONT_SIZE} ({err})"
            ) from None
        self._draw = ImageDraw
        # an emoji the font has no single glyph for comes out as several glyphs side by side
        self.max_advance = 1.5 * self.font.getlength("\U0001f600")
        # Noto draws nothing for a missing glyph, but another build of the font may draw a box
        notdef = self._draw_glyph("\U0010ffff")
        self.notdef = None if notdef is None else notdef.tobytes()

    def _draw_glyph(self, chars: str) -> Optional[Image.Image]:
        """The drawn glyph cropped to its opaque pixels (RGBA), or None if nothing is drawn."""
        probe = self._draw.Draw(Image.new("RGBA", (1, 1)))
        left, top, right, bottom = probe.textbbox((0, 0), chars, font=self.font, embedded_color=True)
        if right <= left or bottom <= top:
            return None
        canvas = Image.new("RGBA", (right - left, bottom - top), (0, 0, 0, 0))
        self._draw.Draw(canvas).text((-left, -top), chars, font=self.font, embedded_color=True)
        bbox = canvas.getchannel("A").getbbox()
        return None if bbox is None else canvas.crop(bbox)

    def render(self, chars: str) -> Optional[Image.Image]:
        if self.font.getlength(chars) > self.max_advance:
            return None
        glyph = self._draw_glyph(chars)
        if glyph is None or (self.notdef is not None and glyph.tobytes() == self.notdef):
            return None
        side = max(glyph.size)
        square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
        return square.convert("RGB")


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "chain_of_diffusion"


def load_emoji_source(cfg: DataConfig) -> SourceData:
    """Every fully-qualified emoji of the ``emoji`` package that Noto Color Emoji draws as one glyph,
    captioned with its English name ("red apple emoji"), in the package's order.

    Emoji the font lacks (newer than the font, or sequences it draws as several glyphs) are not
    part of the set and do not count as skipped. All ~3,800 render in a few seconds, so there is no
    cache. ``data.path`` may name another copy of the font file.
    """
    font_path = _emoji_font_path(cfg)
    renderer = _EmojiRenderer(font_path)

    def candidates() -> Iterator[_Candidate]:
        # rendered lazily, so a max_images cap renders only what it keeps
        for chars, caption in _emoji_candidates(renderer.raqm):
            image = renderer.render(chars)
            if image is not None:
                yield _Candidate(
                    origin="emoji:" + "+".join(f"U{ord(c):04X}" for c in chars),
                    decode=lambda im=image: im,
                    text=caption,
                )

    return _collect(candidates(), cfg)


# -------------------------------------------------------------------------------- fashion_mnist

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_CAPTIONS = [
    f"a grayscale photo of {noun}"
    for noun in (
        "a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat",
        "a sandal", "a shirt", "a sneaker", "a bag", "an ankle boot",
    )
]  # fmt: skip
_FASHION_MNIST_SPLITS = ("train", "t10k")


def _idx_files(folder: Path) -> Optional[dict[str, tuple[Path, Path]]]:
    """split -> (images, labels) paths, gzipped or not, if all four files are in ``folder``."""
    found = {}
    for split in _FASHION_MNIST_SPLITS:
        pair = []
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            options = [folder / f"{split}-{kind}.gz", folder / f"{split}-{kind}"]
            hit = next((p for p in options if p.is_file()), None)
            if hit is None:
                return None
            pair.append(hit)
        found[split] = (pair[0], pair[1])
    return found


def _read_idx(path: Path, limit: Optional[int] = None) -> np.ndarray:
    """An idx array (big-endian header: zero, zero, dtype code, ndim, then the dims), first ``limit``
    items only."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        header = f.read(4)
        if len(header) != 4 or header[:2] != b"\x00\x00" or header[2] != 0x08:
            raise DataError(f"{path}: not an unsigned-byte idx file")
        ndim = header[3]
        dims = [int.from_bytes(f.read(4), "big") for _ in range(ndim)]
        count = dims[0] if limit is None else min(dims[0], limit)
        item = int(np.prod(dims[1:])) if ndim > 1 else 1
        raw = f.read(count * item)
    if len(raw) != count * item:
        raise DataError(f"{path}: truncated idx file ({len(raw)} of {count * item} bytes)")
    return np.frombuffer(raw, dtype=np.uint8).reshape([count, *dims[1:]])


def _download_fashion_mnist(root: Path) -> Path:
    """torchvision's copy of the same idx files; raises when there is no network."""
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(root=str(root), train=train, download=True)
    return root / "FashionMNIST" / "raw"


def load_fashion_mnist_source(cfg: DataConfig) -> SourceData:
    """Fashion-MNIST, 60k train then 10k test images (28x28 grey), from the Debian package
    ``dataset-fashion-mnist`` (or ``data.path``, a folder with the idx files), else torchvision's
    download."""
    folder = Path(cfg.path).expanduser() if cfg.path else FASHION_MNIST_DIR
    files = _idx_files(folder)
    if files is None:
        root = _cache_dir() / "fashion_mnist"
        try:
            files = _idx_files(_download_fashion_mnist(root))
        except Exception as err:
            raise DataError(
                f"data.source=fashion_mnist: no idx files in {folder} and the torchvision download "
                f"failed ({_one_line(err)}); apt-get install dataset-fashion-mnist"
            ) from None
        if files is None:
            raise DataError(
                f"{root}: the torchvision download left no idx files; apt-get install dataset-fashion-mnist"
            )

    # only the needed prefix of each file is decompressed; undecodable pixels cannot occur in idx,
    # so the cap can be exact
    remaining = cfg.max_images
    arrays = []
    for split in _FASHION_MNIST_SPLITS:
        if remaining is not None and remaining <= 0:
            break
        images_path, labels_path = files[split]
        images, labels = _read_idx(images_path, remaining), _read_idx(labels_path, remaining)
        if len(images) != len(labels):
            raise DataError(
                f"{images_path}: {len(images)} images but {len(labels)} labels in {labels_path.name}"
            )
        arrays.append((split, images, labels))
        if remaining is not None:
            remaining -= len(images)

    def candidates() -> Iterator[_Candidate]:
        for split, images, labels in arrays:
            for i in range(len(images)):
                label = int(labels[i])
                yield _Candidate(
                    origin=f"fashion_mnist:{split}:{i}",
                    decode=lambda a=images[i]: Image.fromarray(a, mode="L"),
                    text=FASHION_MNIST_CAPTIONS[label],
                    label=label,
                )

    return _collect(candidates(), cfg, class_names=list(FASHION_MNIST_CLASSES))


# --------------------------------------------------------------------------------------- public

SOURCES: dict[str, Callable[[DataConfig], SourceData]] = {
    "digits": load_digits_source,
    "imagefolder": load_imagefolder_source,
    "csv": load_csv_source,
    "hf": load_hf_source,
    "emoji": load_emoji_source,
    "fashion_mnist": load_fashion_mnist_source,
}


def load_source(cfg: DataConfig) -> SourceData:
    """The real examples of ``cfg.source``: at most ``cfg.max_images``, the first in the source's
    natural order, each an RGB ``cfg.resolution`` square. Raises :class:`DataError` when nothing
    usable is found."""
    loader = SOURCES.get(cfg.source)
    if loader is None:
        raise DataError(f"data.source: unknown source {cfg.source!r}; known: {', '.join(SOURCES)}")
    data = loader(cfg)
    if not data.examples:
        where = cfg.path or f"data.source={cfg.source}"
        detail = f" ({data.num_skipped} skipped; first: {data.skipped[0]})" if data.skipped else ""
        raise DataError(f"{where}: no images found{detail}")
    return data
