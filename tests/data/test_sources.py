"""Real data sources: every source's output convention, and each bad-input rule."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before datasets is imported anywhere
os.environ["HF_DATASETS_OFFLINE"] = "1"

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chain_of_diffusion.config import DataConfig
from chain_of_diffusion.data.sources import SOURCES, DataError, RealExample, SourceData, load_source
from chain_of_diffusion.data.sources import emoji as emoji_source
from chain_of_diffusion.data.sources import fashion_mnist as fashion_source
from chain_of_diffusion.data.transforms import to_resolution

RES = 16
FONT_PRESENT = any(Path(p).is_file() for p in emoji_source.EMOJI_FONT_PATHS)
FASHION_PRESENT = fashion_source._idx_files(fashion_source.FASHION_MNIST_DIR) is not None


def cfg(**kwargs) -> DataConfig:
    return DataConfig(resolution=kwargs.pop("resolution", RES), **kwargs)


def check_examples(data: SourceData, resolution: int = RES) -> None:
    assert isinstance(data, SourceData)
    assert data.examples
    for ex in data.examples:
        assert isinstance(ex, RealExample)
        assert ex.image.mode == "RGB"
        assert ex.image.size == (resolution, resolution)
        assert isinstance(ex.text, str) and ex.text.strip() == ex.text and ex.text
        assert ex.origin


def save_image(path: Path, color=(200, 30, 30), size=(24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_jsonl(folder: Path, records: list[dict]) -> None:
    with open(folder / "metadata.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def corrupt_png(path: Path) -> Path:
    """A PNG cut in half: Image.open succeeds on the header, load() fails."""
    save_image(path, size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ------------------------------------------------------------------------------------ transforms


def test_to_resolution_composites_alpha_on_white_and_resizes_shorter_side():
    im = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    im.paste((0, 0, 255, 255), (0, 0, 6, 20))  # opaque blue stripe at the left edge
    out = to_resolution(im, 10)
    assert out.mode == "RGB" and out.size == (10, 10)
    # the centre crop of the 20x10 resize drops the stripe; the transparent rest is white
    assert np.asarray(out).min() == 255
    left = np.asarray(to_resolution(im, 10, center_crop=False)).astype(int)
    assert left[5, 1, 2] == 255 and left[5, 1, 0] < 60  # the top-left crop keeps it


def test_to_resolution_upscales_grey_to_rgb():
    out = to_resolution(Image.fromarray(np.full((8, 8), 77, np.uint8), mode="L"), 32)
    assert out.mode == "RGB" and out.size == (32, 32)
    assert np.all(np.asarray(out) == 77)


# ---------------------------------------------------------------------------------------- digits


def test_digits_all_images_and_captions():
    data = load_source(cfg(source="digits"))
    check_examples(data)
    assert len(data.examples) == 1797
    sevens = [ex for ex in data.examples if ex.label == 7]
    assert sevens and all(ex.text == "a handwritten digit seven" for ex in sevens)
    assert {ex.label for ex in data.examples} == set(range(10))
    assert data.examples[0].origin == "digits:0"
    assert data.num_skipped == 0
    # white strokes on a black background, as sklearn has them
    first = np.asarray(data.examples[0].image)
    assert first[0, 0].max() == 0 and first.max() > 200


def test_max_images_takes_the_first_in_order():
    data = load_source(cfg(source="digits", max_images=10))
    assert [ex.origin for ex in data.examples] == [f"digits:{i}" for i in range(10)]


def test_unknown_source_names_the_key():
    with pytest.raises(DataError, match="data.source"):
        load_source(cfg(source="nope"))
    assert set(SOURCES) == {"digits", "digits_bold", "imagefolder", "csv", "hf", "emoji", "fashion_mnist", "gaussian", "gmm"}


# ----------------------------------------------------------------------------------- imagefolder


def test_imagefolder_with_metadata_and_string_labels(tmp_path):
    save_image(tmp_path / "a.png", (255, 0, 0))
    save_image(tmp_path / "sub" / "b.jpg", (0, 255, 0))
    save_image(tmp_path / "c.png", (0, 0, 255))
    write_jsonl(
        tmp_path,
        [
            {"file_name": "a.png", "caption": "a red square", "kind": "warm"},
            {"file_name": "sub/b.jpg", "caption": "a green square", "kind": "cool"},
            {"file_name": "c.png", "caption": "a blue square", "kind": "cool"},
        ],
    )
    data = load_source(
        cfg(source="imagefolder", path=str(tmp_path), caption_column="caption", label_column="kind")
    )
    check_examples(data)
    assert [ex.text for ex in data.examples] == ["a red square", "a green square", "a blue square"]
    assert data.class_names == ["cool", "warm"]
    assert [ex.label for ex in data.examples] == [1, 0, 0]
    assert data.examples[1].origin == str(tmp_path / "sub/b.jpg")
    assert tuple(np.asarray(data.examples[0].image)[8, 8]) == (255, 0, 0)


def test_imagefolder_with_txt_captions_recursive_sorted(tmp_path):
    for name, text in [("b.png", "second"), ("a.webp", "first"), ("z/c.bmp", "third")]:
        save_image(tmp_path / name)
        (tmp_path / name).with_suffix(".txt").write_text(text + "\n")
    (tmp_path / "notes.md").write_text("not an image")
    data = load_source(cfg(source="imagefolder", path=str(tmp_path)))
    check_examples(data)
    assert [ex.text for ex in data.examples] == ["first", "second", "third"]
    assert all(ex.label is None for ex in data.examples)


# a gradient over the lower 60% of the 16-bit range: PIL's convert("RGB") clips it to nearly all white
GRADIENT_16 = np.tile(np.linspace(0, 40000, 64), (64, 1)).round().astype(np.uint16)


def _check_gradient(image: Image.Image) -> None:
    loaded = np.asarray(image, dtype=np.float64)
    assert abs(loaded.mean() - (GRADIENT_16 >> 8).mean()) <= 1.0  # about 77.7 of 255
    assert loaded[:, 0].mean() < 10 and loaded[:, -1].mean() > 140  # dark left, light right


def test_sixteen_bit_png_keeps_its_values(tmp_path):
    Image.fromarray(GRADIENT_16).save(tmp_path / "grad.png")
    assert Image.open(tmp_path / "grad.png").mode == "I;16"
    (tmp_path / "grad.txt").write_text("a gradient")
    _check_gradient(load_source(cfg(source="imagefolder", path=str(tmp_path))).examples[0].image)


def test_thirty_two_bit_integer_image_keeps_its_values():
    image = Image.fromarray(GRADIENT_16.astype(np.int32))  # mode I, as older PIL opens 16-bit PNGs
    assert image.mode == "I"
    _check_gradient(to_resolution(image, RES))
    wide = Image.fromarray(GRADIENT_16.astype(np.int32) << 15)  # the same picture over the 31-bit range
    _check_gradient(to_resolution(wide, RES))


def test_imagefolder_missing_folder(tmp_path):
    with pytest.raises(DataError, match="data.path: folder does not exist: .*missing"):
        load_source(cfg(source="imagefolder", path=str(tmp_path / "missing")))


def test_imagefolder_empty_folder(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}: no images found"):
        load_source(cfg(source="imagefolder", path=str(tmp_path)))


def test_undecodable_image_errors_or_is_skipped(tmp_path):
    save_image(tmp_path / "good.png")
    (tmp_path / "good.txt").write_text("fine")
    corrupt_png(tmp_path / "half.png")
    (tmp_path / "half.txt").write_text("truncated")
    (tmp_path / "text.jpg").write_text("this is not a jpeg")
    (tmp_path / "text.txt").write_text("garbage")
    with pytest.raises(DataError) as err:
        load_source(cfg(source="imagefolder", path=str(tmp_path)))
    message = str(err.value)
    assert str(tmp_path / "half.png") in message and "cannot decode image" in message
    assert "data.on_error=skip" in message and "\n" not in message

    data = load_source(cfg(source="imagefolder", path=str(tmp_path), on_error="skip"))
    assert [ex.text for ex in data.examples] == ["fine"]
    assert data.num_skipped == 2
    assert any(str(tmp_path / "half.png") in s for s in data.skipped)
    assert any(str(tmp_path / "text.jpg") in s for s in data.skipped)


def test_missing_caption_errors_or_is_skipped(tmp_path):
    save_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("captioned")
    save_image(tmp_path / "b.png")  # no b.txt
    save_image(tmp_path / "c.png")
    (tmp_path / "c.txt").write_text("   \n")  # empty caption
    with pytest.raises(DataError, match=r"b\.png: no caption"):
        load_source(cfg(source="imagefolder", path=str(tmp_path)))
    data = load_source(cfg(source="imagefolder", path=str(tmp_path), on_error="skip"))
    assert [ex.text for ex in data.examples] == ["captioned"]
    assert data.num_skipped == 2 and "no caption" in data.skipped[0]


def test_metadata_record_without_caption(tmp_path):
    save_image(tmp_path / "a.png")
    save_image(tmp_path / "b.png")
    write_jsonl(tmp_path, [{"file_name": "a.png", "text": "ok"}, {"file_name": "b.png"}])
    with pytest.raises(DataError, match=r"b\.png: no caption .*'text'"):
        load_source(cfg(source="imagefolder", path=str(tmp_path)))
    data = load_source(cfg(source="imagefolder", path=str(tmp_path), on_error="skip"))
    assert len(data.examples) == 1 and data.num_skipped == 1


def test_image_without_metadata_record_errors_or_is_skipped(tmp_path):
    save_image(tmp_path / "a.png")
    save_image(tmp_path / "sub" / "stray.jpg")  # an image of the folder with no record
    (tmp_path / "notes.txt").write_text("not an image")  # not an image: no record needed
    save_image(tmp_path / ".hidden.png")  # hidden files and folders are not part of the set
    save_image(tmp_path / ".cache" / "thumb.png")
    write_jsonl(tmp_path, [{"file_name": "a.png", "text": "recorded"}])
    with pytest.raises(DataError) as err:
        load_source(cfg(source="imagefolder", path=str(tmp_path)))
    message = str(err.value)
    assert str(tmp_path / "sub" / "stray.jpg") in message and "metadata.jsonl" in message
    assert "data.on_error=skip" in message and "\n" not in message

    data = load_source(cfg(source="imagefolder", path=str(tmp_path), on_error="skip"))
    assert [ex.text for ex in data.examples] == ["recorded"]
    assert data.num_skipped == 1 and str(tmp_path / "sub" / "stray.jpg") in data.skipped[0]


def test_everything_skipped_is_no_images_found(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    (tmp_path / "bad.txt").write_text("a caption")
    with pytest.raises(DataError, match="no images found .*1 skipped"):
        load_source(cfg(source="imagefolder", path=str(tmp_path), on_error="skip"))


def test_max_images_stops_before_decoding_later_files(tmp_path):
    for i in range(3):
        save_image(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"image {i}")
    (tmp_path / "9.png").write_bytes(b"broken, but after the cap")
    (tmp_path / "9.txt").write_text("never read")
    data = load_source(cfg(source="imagefolder", path=str(tmp_path), max_images=2))
    assert [ex.text for ex in data.examples] == ["image 0", "image 1"]


# ------------------------------------------------------------------------------------------- csv


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_relative_and_absolute_paths_with_int_labels(tmp_path):
    save_image(tmp_path / "img" / "a.png", (10, 20, 30))
    absolute = save_image(tmp_path / "elsewhere" / "b.png", (40, 50, 60))
    table = write_csv(
        tmp_path / "data.csv",
        ["image", "text", "y"],
        [["img/a.png", "first", "3"], [str(absolute), "second", "10"]],
    )
    data = load_source(cfg(source="csv", path=str(table), label_column="y"))
    check_examples(data)
    assert [ex.text for ex in data.examples] == ["first", "second"]
    assert [ex.label for ex in data.examples] == [3, 10]
    assert data.class_names is None
    assert tuple(np.asarray(data.examples[1].image)[0, 0]) == (40, 50, 60)


def test_csv_missing_column_lists_columns(tmp_path):
    save_image(tmp_path / "a.png")
    table = write_csv(tmp_path / "data.csv", ["file", "text"], [["a.png", "x"]])
    with pytest.raises(DataError) as err:
        load_source(cfg(source="csv", path=str(table)))
    assert "'image'" in str(err.value) and "data.image_column" in str(err.value)
    assert "columns present: file, text" in str(err.value)
    data = load_source(cfg(source="csv", path=str(table), image_column="file"))
    assert data.examples[0].text == "x"


def test_csv_empty_caption_and_missing_file(tmp_path):
    save_image(tmp_path / "a.png")
    save_image(tmp_path / "b.png")
    table = write_csv(
        tmp_path / "data.csv", ["image", "text"], [["a.png", "ok"], ["b.png", ""], ["gone.png", "lost"]]
    )
    with pytest.raises(DataError, match=r"b\.png: no caption"):
        load_source(cfg(source="csv", path=str(table)))
    data = load_source(cfg(source="csv", path=str(table), on_error="skip"))
    assert [ex.text for ex in data.examples] == ["ok"]
    assert data.num_skipped == 2
    assert any("gone.png" in s and "cannot decode image" in s for s in data.skipped)


def test_csv_missing_file(tmp_path):
    with pytest.raises(DataError, match="data.path: file does not exist"):
        load_source(cfg(source="csv", path=str(tmp_path / "none.csv")))


# -------------------------------------------------------------------------------------------- hf


def test_hf_saved_dataset_with_classlabel(tmp_path):
    import datasets

    images = [Image.new("RGB", (20, 30), (i * 60, 0, 0)) for i in range(4)]
    ds = datasets.Dataset.from_dict(
        {"img": images, "caption": [f"picture {i}" for i in range(4)], "cls": [0, 1, 1, 0]},
        features=datasets.Features(
            {
                "img": datasets.Image(),
                "caption": datasets.Value("string"),
                "cls": datasets.ClassLabel(names=["cat", "dog"]),
            }
        ),
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    data = load_source(
        cfg(
            source="hf",
            path=str(tmp_path / "saved"),
            image_column="img",
            caption_column="caption",
            label_column="cls",
            max_images=3,
        )
    )
    check_examples(data)
    assert [ex.text for ex in data.examples] == ["picture 0", "picture 1", "picture 2"]
    assert [ex.label for ex in data.examples] == [0, 1, 1]
    assert data.class_names == ["cat", "dog"]
    assert tuple(np.asarray(data.examples[2].image)[0, 0]) == (120, 0, 0)


def test_hf_saved_dataset_missing_column(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))], "label": [0]}).save_to_disk(
        str(tmp_path / "saved")
    )
    with pytest.raises(DataError, match="no column 'text' .*columns present: image, label"):
        load_source(cfg(source="hf", path=str(tmp_path / "saved")))


def test_hf_imagefolder_directory(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    folder = tmp_path / "folder"
    save_image(folder / "a.png", (1, 2, 3))
    save_image(folder / "b.png", (4, 5, 6))
    write_jsonl(folder, [{"file_name": "a.png", "text": "one"}, {"file_name": "b.png", "text": "two"}])
    data = load_source(cfg(source="hf", path=str(folder)))
    check_examples(data)
    assert sorted(ex.text for ex in data.examples) == ["one", "two"]


def test_hf_parquet_file_with_path_strings(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    save_image(tmp_path / "img" / "a.png", (9, 8, 7))
    datasets.Dataset.from_dict({"image": ["img/a.png"], "text": ["from parquet"]}).to_parquet(
        str(tmp_path / "table.parquet")
    )
    data = load_source(cfg(source="hf", path=str(tmp_path / "table.parquet")))
    assert [ex.text for ex in data.examples] == ["from parquet"]
    assert tuple(np.asarray(data.examples[0].image)[0, 0]) == (9, 8, 7)


def test_hf_unavailable_dataset_is_one_line(tmp_path):
    with pytest.raises(DataError) as err:
        load_source(cfg(source="hf", path="no-such-user/no-such-dataset-xyz"))
    message = str(err.value)
    assert "no-such-user/no-such-dataset-xyz" in message and "not available offline" in message
    assert "\n" not in message


# ----------------------------------------------------------------------------------------- emoji


@pytest.mark.skipif(
    not FONT_PRESENT, reason="Noto Color Emoji font absent (apt-get install fonts-noto-color-emoji)"
)
def test_emoji_first_twenty():
    data = load_source(cfg(source="emoji", max_images=20, resolution=32))
    check_examples(data, 32)
    assert len(data.examples) == 20
    assert all(
        ex.text.endswith(" emoji") and ":" not in ex.text and "_" not in ex.text for ex in data.examples
    )
    assert data.examples[0].text == "1st place medal emoji"
    assert all(ex.label is None for ex in data.examples)
    for ex in data.examples:
        pixels = np.asarray(ex.image).astype(int)
        assert pixels.std() > 10  # a drawn glyph, not a blank square
        # saturated colour somewhere: the colour bitmap was used, not an outline
        assert (pixels.max(axis=2) - pixels.min(axis=2)).max() > 60
    assert tuple(np.asarray(data.examples[0].image)[0, 0]) == (255, 255, 255)  # white background


@pytest.mark.skipif(
    not FONT_PRESENT, reason="Noto Color Emoji font absent (apt-get install fonts-noto-color-emoji)"
)
def test_emoji_sequences_and_missing_glyphs():
    renderer = emoji_source._EmojiRenderer(emoji_source._emoji_font_path(cfg(source="emoji")))
    assert renderer.render("\U0001f34e") is not None  # red apple
    assert renderer.render("\U0010ffff") is None  # unassigned: nothing to draw
    assert renderer.render("\U0001f34e\U0001f34e") is None  # two glyphs are not one emoji
    if renderer.raqm:
        family = renderer.render("\U0001f468\u200d\U0001f469\u200d\U0001f467")  # ZWJ: one glyph
        assert family is not None and family.width < 200
        assert renderer.render("\U0001f1ef\U0001f1f5") is not None  # flag of Japan
    assert emoji_source._emoji_caption("\U0001f1ef\U0001f1f5", ":Japan:") == "flag of Japan emoji"
    assert emoji_source._emoji_caption("\U0001f34e", ":red_apple:") == "red apple emoji"


def test_emoji_font_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(emoji_source, "EMOJI_FONT_PATHS", (str(tmp_path / "NoFont.ttf"),))
    with pytest.raises(DataError, match="apt-get install fonts-noto-color-emoji .*NoFont.ttf"):
        load_source(cfg(source="emoji", max_images=1))


# --------------------------------------------------------------------------------- fashion_mnist


@pytest.mark.skipif(not FASHION_PRESENT, reason="dataset-fashion-mnist not installed (no network here)")
def test_fashion_mnist_first_fifty():
    data = load_source(cfg(source="fashion_mnist", max_images=50))
    check_examples(data)
    assert len(data.examples) == 50
    assert data.class_names[9] == "Ankle boot"
    # the first training image of Fashion-MNIST is an ankle boot
    assert data.examples[0].label == 9 and data.examples[0].text == "a grayscale photo of an ankle boot"
    assert all(0 <= ex.label <= 9 for ex in data.examples)
    assert len({ex.label for ex in data.examples}) > 5
    assert data.examples[3].origin == "fashion_mnist:train:3"


def test_fashion_mnist_reads_idx_files_from_data_path(tmp_path):
    import gzip

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("t10k", 2)):
        pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) + (5 if split == "t10k" else 0)
        header = b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
        with gzip.open(tmp_path / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(header + pixels.tobytes())
        with gzip.open(tmp_path / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(b"\x00\x00\x08\x01" + n.to_bytes(4, "big") + labels.tobytes())
    data = load_source(cfg(source="fashion_mnist", path=str(tmp_path), resolution=28))
    assert [ex.label for ex in data.examples] == [0, 1, 2, 5, 6]
    assert data.examples[3].origin == "fashion_mnist:t10k:0"
    assert data.examples[1].text == "a grayscale photo of a pair of trousers"
    capped = load_source(cfg(source="fashion_mnist", path=str(tmp_path), max_images=4))
    assert [ex.label for ex in capped.examples] == [0, 1, 2, 5]


def test_fashion_mnist_absent_names_the_debian_package(monkeypatch, tmp_path):
    def no_network(root):
        raise ConnectionError("no network")

    monkeypatch.setattr(fashion_source, "FASHION_MNIST_DIR", tmp_path / "none")
    monkeypatch.setattr(fashion_source, "_download_fashion_mnist", no_network)
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_source(cfg(source="fashion_mnist", max_images=5))


def test_config_defaults_load():
    """The default DataConfig (digits) works through load_source unchanged."""
    data = load_source(dataclasses.replace(DataConfig(), max_images=5))
    check_examples(data, DataConfig().resolution)


def test_small_images_are_upscaled_with_a_warning_or_refused_by_min_size(tmp_path, caplog):
    save_image(tmp_path / "big.png", size=(40, 40))
    (tmp_path / "big.txt").write_text("big")
    save_image(tmp_path / "small.png", size=(8, 12))
    (tmp_path / "small.txt").write_text("small")
    with caplog.at_level("WARNING"):
        data = load_source(cfg(source="imagefolder", path=str(tmp_path)))
    check_examples(data)
    assert data.upscaled == [str(tmp_path / "small.png")]
    assert "1 images are smaller than data.resolution=16" in caplog.text
    with pytest.raises(DataError) as err:
        load_source(cfg(source="imagefolder", path=str(tmp_path), min_size=16))
    assert "small.png: 8x12 is smaller than data.min_size=16" in str(err.value) and "\n" not in str(err.value)
    kept = load_source(cfg(source="imagefolder", path=str(tmp_path), min_size=16, on_error="skip"))
    assert [ex.text for ex in kept.examples] == ["big"] and kept.num_skipped == 1


def test_digits_bold_is_the_fifth_of_the_digits_the_base_never_sees_thickened():
    import numpy as np

    from chain_of_diffusion.bases import BASES, pretraining_set
    from chain_of_diffusion.data.sources.digits import digit_pixels
    from chain_of_diffusion.data.sources.digits_bold import thicken

    data = load_source(cfg(source="digits_bold", resolution=8))
    assert len(data.examples) == 360 and data.class_names == [str(d) for d in range(10)]
    first = data.examples[0]
    assert first.origin == "digits:0" and first.text == "a bold handwritten digit zero" and first.label == 0
    indices = {int(e.origin.split(":")[1]) for e in data.examples}
    assert indices == set(range(0, 1797, 5))
    images, captions, labels = pretraining_set(BASES["digits"])
    assert images.shape == (1797 - 360, 3, 8, 8) and "bold" not in " ".join(captions)
    pixels, _ = digit_pixels()
    bold = thicken(pixels[0])
    assert (bold >= pixels[0]).all() and bold.sum() > pixels[0].sum()  # strokes only grow
    assert np.array_equal(np.asarray(first.image)[..., 0], bold)
