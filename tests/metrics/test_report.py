import json
import re

import torch
from PIL import Image

from chain_of_diffusion.metrics.report import make_grid_image, plot_metric_curves, write_report


def test_make_grid_image_size_and_range():
    images = torch.full((6, 1, 16, 16), -1.0)
    images[0] = 1.0
    img = make_grid_image(images, nrow=3, scale=2)
    # make_grid pads 2 px around every tile: width = 3 * (16 + 2) + 2.
    assert img.size == ((3 * 18 + 2) * 2, (2 * 18 + 2) * 2)
    assert img.mode == "RGB"
    assert img.getpixel((2 * 2 + 1, 2 * 2 + 1)) == (255, 255, 255)  # inside the white first tile
    assert img.getpixel((20 * 2 + 1, 2 * 2 + 1)) == (0, 0, 0)  # inside the black second tile


def test_plot_metric_curves_one_png_per_numeric_metric(tmp_path):
    rows = [
        {"generation": 0, "fd_classifier": 10.0, "fd_classifier_reference": 2.0, "entropy": 1.0, "note": "x"},
        {"generation": 1, "fd_classifier": 20.0, "fd_classifier_reference": 2.0, "entropy": None},
    ]
    paths = plot_metric_curves(rows, tmp_path / "curves")
    assert sorted(p.name for p in paths) == ["entropy.png", "fd_classifier.png"]
    assert all(Image.open(p).size[0] > 100 for p in paths)


def fake_run(run_dir, generations=3):
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 0\noutput_dir: <runs & stuff>\n")
    gen = torch.Generator().manual_seed(0)
    make_grid_image(torch.rand(8, 3, 16, 16, generator=gen) * 2 - 1, nrow=4).save(
        (run_dir / "reference").mkdir() or run_dir / "reference" / "grid.png"
    )
    with open(run_dir / "metrics.jsonl", "w") as f:
        for g in range(generations):
            (run_dir / f"gen_{g:02d}").mkdir()
            make_grid_image(torch.rand(8, 3, 16, 16, generator=gen) * 2 - 1, nrow=4, scale=2).save(
                run_dir / f"gen_{g:02d}" / "grid.png"
            )
            row = {
                "generation": g,
                "fd_classifier": 10.0 * (g + 1),
                "fd_classifier_reference": 3.5,
                "memorization": 0.1 * g,
                "generalization": 2.0 - g,
                "entropy": 5.0 - g,
            }
            f.write(json.dumps(row) + "\n")
    return run_dir


def test_write_report_references_every_grid_and_curve(tmp_path):
    run_dir = fake_run(tmp_path / "run")
    out = write_report(run_dir)
    assert out == run_dir / "report.html" and out.is_file()
    page = out.read_text()
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', page)
    expected_grids = ["reference/grid.png"] + [f"gen_{g:02d}/grid.png" for g in range(3)]
    assert [s for s in srcs if s.endswith("grid.png")] == expected_grids
    curves = sorted(s for s in srcs if s.startswith("report_files/"))
    assert curves == sorted(
        f"report_files/{m}.png" for m in ("fd_classifier", "memorization", "generalization", "entropy")
    )
    assert all((run_dir / s).is_file() for s in srcs)
    assert "generation 2" in page and ">real<" in page
    assert "image-rendering: pixelated" in page
    assert "&lt;runs &amp; stuff&gt;" in page  # config shown, escaped
    assert page.split('class="metrics"')[1].count("<tr>") == 1 + 3  # header + one row per generation
    # the headline: the Fréchet distance against the real data, its direction, what changed
    assert "fd_classifier rose from 10 at generation 0 to 30 at generation 2 (lower is better; real data: 3.5): worse." in page
    assert not list(run_dir.glob("**/*.tmp")) and not list(run_dir.glob(".*"))


def test_write_report_on_empty_run_dir(tmp_path):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    out = write_report(run_dir)
    page = out.read_text()
    assert "No generation finished yet" in page
    assert "<img" not in page


def test_write_report_skips_torn_last_line(tmp_path):
    run_dir = tmp_path / "torn"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"generation": 0, "entropy": 1.5}\n{"generation": 1, "entr')
    page = write_report(run_dir).read_text()
    assert page.split('class="metrics"')[1].count("<tr>") == 2
    assert (run_dir / "report_files" / "entropy.png").is_file()
