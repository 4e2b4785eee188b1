"""The evaluate stage computes the suite's metrics inside a chain run (end to end)."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SMOKE, TINY_OVERRIDES, cli, run_cli
from safetensors import safe_open
from test_inception import inception_weights  # noqa: F401  (the session fixture, built once)


def test_chain_writes_drift_and_precision_recall(finished_run):
    """The shared run (conftest.SHARED_METRICS) asks for drift and PRDC in pixel space."""
    row = json.loads((finished_run / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("fd_classifier", "memorization", "precision", "recall", "density", "coverage",
                "saturation_mean", "saturation_std", "hf_energy", "sharpness", "saturation_mean_reference",
                "hf_energy_reference", "sharpness_reference"):
        assert isinstance(row[key], float) and math.isfinite(row[key]), key
    assert 0.0 <= row["precision"] <= 1.0 and 0.0 <= row["hf_energy"] <= 1.0
    assert (finished_run / "reference" / "drift.json").exists()


def test_unknown_metric_name_is_a_config_error(tmp_path):
    proc = cli("--config", str(SMOKE), f"output_dir={tmp_path / 'run'}", "metrics.names=[fid]", "--dry-run")
    assert proc.returncode == 2
    assert "unknown metric 'fid'" in proc.stderr and "fid_inception" in proc.stderr


# ---- Inception metrics inside a chain: one small run shared by the tests below --------------------
# 16 samples per generation and 8-row Inception batches: Inception at 299x299 costs ~0.3 s per image
# on one CPU thread, so these runs extract ~80 images in all
INCEPTION_OVERRIDES = [*TINY_OVERRIDES, "data.num_train=16", "data.num_heldout=16", "metrics.batch_size=8",
                       "metrics.names=[fd_classifier,fid_inception,kid_inception]", "metrics.tracker=tensorboard"]


@pytest.fixture(scope="session")
def inception_run(tmp_path_factory, inception_weights):  # noqa: F811
    """A finished 2-generation chain with fid_inception/kid_inception and a TensorBoard tracker (1 thread,
    so a 2-process run can be compared with it bit for bit)."""
    out = tmp_path_factory.mktemp("inception_run") / "run"
    proc = run_cli("--config", str(SMOKE), f"output_dir={out}", *INCEPTION_OVERRIDES,
                   f"metrics.inception_weights={inception_weights}", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _features(path):
    with safe_open(str(path), "pt") as f:
        return f.get_tensor("features"), f.metadata()


@pytest.mark.slow  # the default tier checks the Inception metrics against torch-fidelity on folders (tests/metrics/test_inception.py)
def test_stage_writes_inception_metrics_references_and_feature_caches(inception_run):
    rows = [json.loads(line) for line in (inception_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [0, 1]
    for row in rows:
        for key in ("fid_inception", "kid_inception", "kid_inception_std"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), key
        # the real training set against the held-out split, computed once by the reference stage
        assert row["fid_inception_reference"] > 0 and math.isfinite(row["kid_inception_reference"])
        assert row["fid_inception"] > row["fid_inception_reference"]
    held, _ = _features(inception_run / "reference" / "features_inception.safetensors")
    assert held.shape == (16, 2048)
    for g in (0, 1):
        feats, meta = _features(inception_run / f"gen_{g:02d}" / "evaluation" / "features_inception.safetensors")
        assert feats.shape == (16, 2048) and meta["space"] == "inception" and len(meta["image_set"]) == 16


@pytest.mark.slow  # as above: the in-chain Inception run costs a minute on 1 thread
def test_run_mode_reuses_the_cached_inception_features(inception_run, tmp_path):
    """scripts/evaluate.py recomputes fid/kid from the stage's cached features: the same numbers, and it
    never needs the weights (pointed at a missing file, it would fail if it loaded Inception)."""
    run = tmp_path / "run"
    shutil.copytree(inception_run, run)
    before = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), str(run), "--metrics",
                           "fid_inception", "kid_inception", "--set", f"metrics.inception_weights={tmp_path / 'none.pth'}"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    after = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(before, after):
        # same features; the covariance and sqrtm sums may run on another thread count (BLAS), so
        # equal up to rounding, not bit for bit
        assert b["fid_inception"] == pytest.approx(a["fid_inception"], rel=1e-7)
        assert b["kid_inception"] == pytest.approx(a["kid_inception"], rel=1e-6, abs=1e-9)
    # a generation without the cache (what run mode calls, in this process to spare a start-up): its
    # samples are extracted once more, with the same result, and the cache is written for next time
    from chain_of_diffusion.config import load_config
    from chain_of_diffusion.metrics.evaluation import evaluate_generation
    from chain_of_diffusion.runs import RunDir
    from chain_of_diffusion.stages.evaluate import evaluated_sample_records, generation_folders

    cache = run / "gen_01" / "evaluation" / "features_inception.safetensors"
    cached, _ = _features(cache)
    cache.unlink()
    cfg = load_config([run / "config.yaml"], [])
    again = evaluate_generation(cfg, generation_folders(RunDir(run), 1),
                                evaluated_sample_records(cfg, RunDir(run), 1), ["fid_inception"])
    assert again["fid_inception"] == pytest.approx(before[1]["fid_inception"], rel=1e-5)
    assert torch.allclose(_features(cache)[0], cached, atol=1e-4)


# the default tier checks 2 processes against 1 byte for byte on the shared run (tests/test_distributed.py)
@pytest.mark.slow
def test_two_processes_give_the_same_inception_features_and_metrics(inception_run, tmp_path, inception_weights):  # noqa: F811
    """Sharded extraction (each process its block, fixed 8-row batches, gathered) = one process, bit for bit.
    One generation is enough (the fingerprint leaves out `generations`)."""
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "scripts" / "chain.py"), "--config", str(SMOKE), f"output_dir={out}", *INCEPTION_OVERRIDES,
           f"metrics.inception_weights={inception_weights}", "generations=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "env.json").read_text())["num_processes"] == 2
    one, _ = _features(inception_run / "gen_00" / "evaluation" / "features_inception.safetensors")
    two, _ = _features(out / "gen_00" / "evaluation" / "features_inception.safetensors")
    assert torch.equal(one, two)
    # the held-out features of the reference stage are sharded over the processes too
    held_one, _ = _features(inception_run / "reference" / "features_inception.safetensors")
    held_two, _ = _features(out / "reference" / "features_inception.safetensors")
    assert held_one.shape[0] == 16 and torch.equal(held_one, held_two)
    first = (inception_run / "metrics.jsonl").read_text().splitlines()[0]
    assert (out / "metrics.jsonl").read_text().splitlines()[0] == first


@pytest.mark.slow  # tests/metrics/test_tracking.py checks the TensorBoard log of a chain in the default tier
def test_tensorboard_gets_each_generation_once_even_when_evaluate_reruns(inception_run, tmp_path,
                                                                         inception_weights):  # noqa: F811
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def steps(run):
        ea = EventAccumulator(str(run / "tensorboard" / "chain"))
        ea.Reload()
        assert "samples" in ea.Tags()["images"]
        return {tag: [e.step for e in ea.Scalars(tag)] for tag in ("fid_inception", "kid_inception", "fd_classifier")}

    run = tmp_path / "run"
    shutil.copytree(inception_run, run)
    assert steps(run) == {tag: [0, 1] for tag in ("fid_inception", "kid_inception", "fd_classifier")}
    # a kill inside gen 1's evaluate stage: the folder never committed, the stage runs again on resume
    shutil.rmtree(run / "gen_01" / "evaluation")
    state = json.loads((run / "state.json").read_text())
    state["done"]["1"].remove("evaluate")
    state.pop("finished", None)
    (run / "state.json").write_text(json.dumps(state))
    proc = run_cli("--config", str(SMOKE), f"output_dir={run}", *INCEPTION_OVERRIDES,
                   f"metrics.inception_weights={inception_weights}",
                   env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[gen 1/1] evaluate" in proc.stdout
    assert steps(run) == {tag: [0, 1] for tag in ("fid_inception", "kid_inception", "fd_classifier")}


def test_samples_of_another_size_than_the_heldout_images_are_an_error_naming_both(tmp_path):
    """Inception, CLIP and DINOv2 resize every image, so without this check a generation rendered at
    another size than the real data would be compared without a word."""
    from PIL import Image

    from chain_of_diffusion.config import load_config
    from chain_of_diffusion.data.imageset import save_png, write_metadata
    from chain_of_diffusion.metrics.evaluation import GenerationFolders, ReferenceFolders, evaluate_generation
    from chain_of_diffusion.metrics.suite import MetricInputError

    records = [{"file_name": f"{i}.png", "text": "a square"} for i in range(3)]
    for name, size in (("heldout", 16), ("samples", 20)):
        (tmp_path / name).mkdir()
        for r in records:
            save_png(Image.new("RGB", (size, size), (90, 20, 200)), tmp_path / name / r["file_name"])
        write_metadata(tmp_path / name, records)
    folders = GenerationFolders(tmp_path / "samples", tmp_path / "heldout", tmp_path / "eval",
                                ReferenceFolders(tmp_path / "reference", tmp_path / "heldout"))
    cfg = load_config([], ["metrics.features=pixels"])
    with pytest.raises(MetricInputError, match="samples are 20x20 pixels but the held-out real images .* are 16x16"):
        evaluate_generation(cfg, folders, records, ["fd_classifier"])
