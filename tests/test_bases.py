"""The pretrained base made here (base:digits) and the quickstart's LoRA chain on it."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_BASE, call_main, cli, load_script

from chain_of_diffusion.bases import (
    BASES,
    INFO,
    base_folder,
    ensure_base,
    spec_key,
    spec_with,
)
from chain_of_diffusion.config import ConfigError, load_config

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
# the quickstart's chain at a toy size, on the toy base
TOY_CHAIN = ["generations=2", "data.num_train=40", "data.num_heldout=40", "train.steps=6", "train.batch_size=8",
             "train.lr_warmup_steps=1", "train.checkpoint_every=3", "train.log_every=3", "sample.steps=3",
             "metrics.classifier_steps=20"]


def test_base_is_built_once_then_reused(tiny_base):
    spec = spec_with(BASES["digits"], TINY_BASE)
    assert tiny_base == base_folder(spec)
    assert tiny_base.parent == Path(os.environ["CHAIN_OF_DIFFUSION_CACHE"]) / "bases"  # never the user's ~/.cache
    info = json.loads((tiny_base / INFO).read_text())
    assert info["spec"]["steps"] == 40 and info["num_images"] == 1437  # the digits the chain's source never holds
    before = (tiny_base / INFO).stat().st_mtime_ns
    said = []
    assert ensure_base(spec, say=said.append) == tiny_base
    assert said == [] and (tiny_base / INFO).stat().st_mtime_ns == before  # no second training


def test_the_launchers_thread_count_does_not_change_the_base(tiny_base, tmp_path, monkeypatch):
    """accelerate launch gives each process 1 CPU thread, python 2 here; float sums depend on it, so a base
    trained with the launcher's count would be another base. It is trained with bases.BUILD_THREADS."""
    from safetensors.torch import load_file

    monkeypatch.setenv("CHAIN_OF_DIFFUSION_CACHE", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    other = ensure_base(spec_with(BASES["digits"], TINY_BASE), say=lambda _: None)
    assert other != tiny_base and json.loads((other / INFO).read_text())["threads"] == 2
    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(tiny_base / weights)), load_file(str(other / weights))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_changed_spec_is_another_base_and_a_stale_partial_build_is_never_loaded(tiny_base):
    spec = spec_with(BASES["digits"], [*TINY_BASE, "steps=8"])
    assert spec_key(spec) != spec_key(spec_with(BASES["digits"], TINY_BASE))
    folder = base_folder(spec)
    # a build killed while saving: a half-written model in the staging folder, no folder in place
    staged = folder.with_name(folder.name + ".partial") / "model"
    staged.mkdir(parents=True)
    (staged / "junk.bin").write_bytes(b"half")
    said = []
    assert ensure_base(spec, say=said.append) == folder and len(said) == 1
    assert json.loads((folder / INFO).read_text())["spec"]["steps"] == 8
    assert not (folder / "junk.bin").exists() and not staged.parent.exists()
    assert (tiny_base / INFO).is_file()  # the other base is untouched


def test_base_loads_as_a_pipeline_folder(tiny_base):
    from chain_of_diffusion.models.pretrained import load_pretrained, objective_of

    model = load_pretrained(str(tiny_base))
    assert model.vae is None and model.unet.config.in_channels == 3 and objective_of(model) == "eps"
    # the text encoder was trained with the UNet: its weights differ from a fresh one of the same seed
    from chain_of_diffusion.config import ModelConfig
    from chain_of_diffusion.models.build import build_model
    from chain_of_diffusion.seeding import derive_seed

    fresh = build_model(ModelConfig(arch="tiny"), 8, seed=derive_seed(0, "base-init"))
    a = dict(model.text_encoder.named_parameters())
    b = dict(fresh.text_encoder.named_parameters())
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_base_of_another_format_version_is_named_in_one_line(tmp_path, tiny_base):
    old = tmp_path / "old_base"
    shutil.copytree(tiny_base, old)
    info = json.loads((old / INFO).read_text())
    (old / INFO).write_text(json.dumps({**info, "format": 0}))
    proc = cli("--config", str(QUICKSTART), f"output_dir={tmp_path / 'run'}", f"model.pretrained={old}", "--dry-run")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert str(old) in proc.stderr and "format version 0" in proc.stderr


def test_no_config_runs_the_quickstart_and_a_dry_run_builds_nothing(tmp_path):
    proc = cli(f"output_dir={tmp_path / 'run'}", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "pretrained: base:digits" in proc.stdout and "source: digits_bold" in proc.stdout
    assert "mode: lora" in proc.stdout
    assert not base_folder(BASES["digits"]).exists()  # the full base is built by a run, not a dry run


def test_lora_chain_on_the_base_reports_caption_accuracy(tmp_path, tiny_base):
    out = tmp_path / "run"
    proc = cli("--config", str(QUICKSTART), f"output_dir={out}", f"model.pretrained={tiny_base}", *TOY_CHAIN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [0, 1]
    for row in rows:
        assert 0.0 <= row["caption_accuracy"] <= 1.0
        assert {"fd_classifier", "precision", "recall", "saturation_mean", "sharpness"} <= set(row)
    assert (out / "gen_00" / "model" / "pytorch_lora_weights.safetensors").is_file()
    assert "caption_accuracy" in proc.stdout  # the printed table


def test_caption_accuracy_needs_labels_named_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="'metrics.names'.*caption_accuracy"):
        load_config([], ["data.source=imagefolder", f"data.path={tmp_path}", "metrics.features=pixels",
                         "metrics.names=[caption_accuracy]"])
    cfg = load_config([], ["data.source=imagefolder", f"data.path={tmp_path}", "data.label_column=label",
                           "metrics.names=[caption_accuracy]"])
    assert cfg.metrics.names == ["caption_accuracy"]


def test_caption_accuracy_is_the_share_the_classifier_puts_in_the_caption_class():
    from chain_of_diffusion.config import MetricsConfig
    from chain_of_diffusion.metrics.classifier import FeatureClassifier
    from chain_of_diffusion.metrics.suite import FeatureSpaces, compute_metrics

    torch.manual_seed(0)
    classifier = FeatureClassifier(in_channels=3, resolution=8, num_classes=3).eval()
    images = torch.rand(7, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        predicted = classifier(images).argmax(1).tolist()
    captions = ["zero", "one", "two", "zero", "one", "two", "a caption no real image has"]
    labels = {"zero": 0, "one": 1, "two": 2}
    by_hand = sum(predicted[i] == labels[captions[i]] for i in range(6)) / 6
    mcfg = MetricsConfig(names=["caption_accuracy"], features="pixels")
    out = compute_metrics(["caption_accuracy"], mcfg, FeatureSpaces(mcfg, classifier=classifier), images,
                          lambda space: None, captions=captions, caption_labels=labels)
    assert out == {"caption_accuracy": pytest.approx(by_hand)}


def test_pretrain_base_script_sweeps_cfg_and_refuses_bad_overrides(tiny_base):
    script = load_script("pretrain_base").main
    bad = call_main(script, "stepz=3")
    assert bad.returncode == 2 and "stepz=3" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    proc = call_main(script, *TINY_BASE, "--sweep", "1,3", "--per-class", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(tiny_base)
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "3"] and all(0.0 <= float(r[1]) <= 1.0 for r in rows)
