"""A newcomer's first tries (issue 14), through the real entry point: images at the resolution asked
for, a size the model cannot take refused before any work, a relative pipeline folder found from
another working directory, a run directory that takes the corrected command after a failed first
try, and a small folder that runs with the default split."""

import json
import math
from pathlib import Path

from conftest import ROOT, SMOKE, TINY_OVERRIDES, cli
from PIL import Image
from test_chain import _one_error_line

from chain_of_diffusion.config import load_config

LORA = ROOT / "configs" / "tiny_sd_lora.yaml"
# one generation of a few steps: what is written where, and that every stage runs
ONE_GEN = ["generations=1", "train.steps=2", "train.checkpoint_every=2", "train.log_every=1",
           "train.lr_warmup_steps=1", "sample.steps=2", "metrics.features=pixels"]


def _captioned_folder(root: Path, n: int) -> Path:
    folder = root / "my_images"
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (24, 24), (i * 6 % 256, 40, 200 - i)).save(folder / f"img{i:03d}.png")
        (folder / f"img{i:03d}.txt").write_text(f"a square number {i % 4}")
    return folder


def test_pretrained_pipeline_generates_at_data_resolution(tmp_path, tiny_sd_pipeline):
    # the pipeline was saved for 32 px (sample_size 4 latents); the chain asks for 48
    out = tmp_path / "run"
    proc = cli("--config", str(LORA), f"output_dir={out}", f"model.pretrained={tiny_sd_pipeline}", "data.resolution=48",
               "data.num_train=16", "data.num_heldout=16", *ONE_GEN, "metrics.names=[fd_classifier,memorization,precision,recall]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    samples = sorted((out / "gen_00" / "samples").glob("*.png"))
    assert len(samples) == 16 and {Image.open(p).size for p in samples} == {(48, 48)}
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["fd_pixels"]) and 0.0 <= row["precision"] <= 1.0 and 0.0 <= row["recall"] <= 1.0


def test_resolution_the_model_cannot_take_is_refused_before_any_work(tmp_path, tiny_sd_pipeline):
    out = tmp_path / "run"
    line = _one_error_line(cli("--config", str(LORA), f"output_dir={out}", f"model.pretrained={tiny_sd_pipeline}",
                               "data.resolution=7"))
    assert "data.resolution" in line and "multiple of 16" in line  # 8x VAE, then one UNet halving
    line = _one_error_line(cli("--config", str(SMOKE), f"output_dir={out}", "data.resolution=7"))
    assert "data.resolution" in line and "multiple of 4" in line and "model.arch=tiny" in line
    assert not out.exists()


def test_relative_pretrained_is_looked_for_beside_the_config_file(tmp_path, tiny_sd_pipeline, monkeypatch):
    project = tmp_path / "project"
    (project / "pipelines").mkdir(parents=True)
    (project / "pipelines" / "tiny_sd").symlink_to(tiny_sd_pipeline, target_is_directory=True)
    (project / "configs").mkdir()
    mine = project / "configs" / "mine.yaml"
    mine.write_text("model:\n  pretrained: ../pipelines/tiny_sd\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    proc = cli("--config", str(LORA), "--config", str(mine), f"output_dir={tmp_path / 'r'}", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"pretrained: {project / 'pipelines' / 'tiny_sd'}\n" in proc.stdout  # the folder it resolved to
    # tiny_sd_lora.yaml's own pipelines/tiny_sd (relative to the repository root) from another folder: it has
    # the form of a Hub id, so after the two folders it looks in the Hub cache, and the one line says where it looked
    line = _one_error_line(cli("--config", str(LORA), f"output_dir={tmp_path / 'r'}", "--dry-run"))
    assert str(elsewhere / "pipelines" / "tiny_sd") in line and str(ROOT / "configs" / "pipelines" / "tiny_sd") in line
    assert "Hub id" in line and "hf download" in line


def test_run_dir_where_no_stage_finished_takes_the_corrected_config(tmp_path):
    folder = _captioned_folder(tmp_path, 40)
    out = tmp_path / "run"
    args = ["--config", str(SMOKE), f"output_dir={out}", *TINY_OVERRIDES, *ONE_GEN, "data.source=imagefolder",
            f"data.path={folder}", "metrics.names=[memorization]"]
    first = _one_error_line(cli(*args, "data.num_heldout=64", "data.num_train=null"))  # stops in the first stage
    assert "data.num_heldout=64" in first and (out / "fingerprint.json").is_file() and not (out / "real").exists()
    proc = cli(*args, "data.num_heldout=8", "data.num_train=null")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no stage finished: the new config replaces the old (changed: data.num_heldout)" in proc.stdout
    assert len(list((out / "gen_00" / "samples").glob("*.png"))) == 32  # one per training caption: 40 - 8
    # once a stage has finished, a changed config is refused again
    line = _one_error_line(cli(*args, "data.num_heldout=8", "data.num_train=null", "train.lr=0.5"))
    assert "different config" in line and "train.lr" in line


def test_small_folder_with_the_default_split_runs_first_time(tmp_path):
    folder = _captioned_folder(tmp_path, 40)
    out = tmp_path / "run"
    overrides = [o for o in TINY_OVERRIDES if not o.startswith(("data.num_train=", "data.num_heldout="))]
    proc = cli("--config", str(SMOKE), "data.num_train=auto", "data.num_heldout=auto", f"output_dir={out}",
               *overrides, *ONE_GEN, "data.source=imagefolder", f"data.path={folder}", "metrics.names=[memorization]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    note = [line for line in proc.stdout.splitlines() if "usable images" in line]
    assert note == ["[real] 40 usable images: 8 held out for evaluation (data.num_heldout=auto: 20%, at least 8), "
                    "32 trained on (data.num_train=auto: the rest)"]
    # what was read, on the terminal too (not only in log.txt): images, captions, skipped, the resize
    res = load_config([SMOKE]).data.resolution
    assert f"[real] imagefolder {folder}: 40 images, 4 distinct captions, 0 skipped, sides of 24 px resized to " \
           f"{res}x{res}, trained as RGB (data.channels=auto)" in proc.stdout.splitlines()
    summary = json.loads((out / "real" / "summary.json").read_text())
    assert (summary["heldout"], summary["train"], summary["pool"]) == (8, 32, 0)
    assert math.isfinite(json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["memorization"])


def test_run_made_when_the_split_was_numbers_resumes_under_auto(tmp_path):
    """The old defaults (500/500) and auto split a 1,797-image source alike: the same run; a 900-image
    source is split otherwise by auto (180/720): a changed config."""
    import pytest

    from chain_of_diffusion.chain import _check_existing
    from chain_of_diffusion.config import fingerprint_dict, load_config
    from chain_of_diffusion.errors import RunDirError
    from chain_of_diffusion.runs import RunDir, atomic_write_json

    run = RunDir(tmp_path / "run")
    old = load_config([], ["data.num_train=500", "data.num_heldout=500"])
    atomic_write_json(run.root / "fingerprint.json", fingerprint_dict(old))
    (run.real).mkdir()
    atomic_write_json(run.real / "summary.json", {"num_images": 1797, "heldout": 500, "train": 500, "pool": 797})
    said = []
    _check_existing(run, load_config(), said.append)  # auto now
    assert said == []
    atomic_write_json(run.real / "summary.json", {"num_images": 900, "heldout": 500, "train": 400, "pool": 0})
    with pytest.raises(RunDirError, match="data.num_heldout"):
        _check_existing(run, load_config(), said.append)
