"""End to end through the real entry point (``scripts/chain.py``) on tiny configs."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ONE_THREAD, ROOT, SHARED_ARGS, SMOKE, TINY_OVERRIDES, cli, run_cli
from PIL import Image

# for chains that check plumbing only (what is written where, counted how): 4 training steps, 2 sampling steps
PLUMBING = ["train.steps=4", "train.checkpoint_every=4", "train.log_every=4", "train.lr_warmup_steps=1",
            "sample.steps=2"]


def test_run_directory_layout(finished_run: Path):
    for name in ("config.yaml", "env.json", "state.json", "metrics.jsonl", "report.html", "log.txt"):
        assert (finished_run / name).is_file(), name
    assert (finished_run / "reference" / "heldout_features.safetensors").is_file()
    for g in (0, 1):
        gen = finished_run / f"gen_{g:02d}"
        for name in ("train_set/metadata.jsonl", "model/unet/config.json", "samples/metadata.jsonl",
                     "selected/metadata.jsonl", "metrics.json", "grid.png", "timing.json"):
            assert (gen / name).is_file(), f"gen_{g:02d}/{name}"
        assert not (gen / ".train_checkpoints").exists()
        assert not list(gen.glob(".tmp_*"))
    rows = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [0, 1]
    for key in ("fd_classifier", "memorization", "entropy", "fd_classifier_reference"):
        assert isinstance(rows[1][key], float) and math.isfinite(rows[1][key]), key
    assert rows[0]["real_share"] == 1.0 and rows[1]["real_share"] == 0.0
    page = (finished_run / "report.html").read_text()
    assert '<div class="captions"><span>a handwritten digit' in page  # the captions head the grid's columns
    for rel in ("reference/grid.png", "gen_00/grid.png", "gen_01/grid.png", "report_files/fd_classifier.png"):
        assert f'src="{rel}"' in page and (finished_run / rel).is_file(), rel
    state = json.loads((finished_run / "state.json").read_text())
    assert state["finished"] is True and state["done"]["1"][-1] == "evaluate"
    timing = json.loads((finished_run / "gen_00" / "timing.json").read_text())
    assert timing["train"]["work_s"][0] > 0 and len(timing["train"]["wait_s"]) == 1
    assert "processes idle" not in page  # one process: nothing to wait for


def test_shared_run_writes_drift_and_precision_recall(finished_run: Path):
    # the shared run lists them in metrics.names (conftest.SHARED_METRICS), with pixel PRDC features
    rows = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        for key in ("fd_classifier", "memorization", "precision", "recall", "density", "coverage",
                    "saturation_mean", "saturation_std", "hf_energy", "sharpness", "saturation_mean_reference",
                    "hf_energy_reference", "sharpness_reference"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (row["generation"], key)
        assert 0.0 <= row["precision"] <= 1.0 and 0.0 <= row["recall"] <= 1.0 and 0.0 <= row["coverage"] <= 1.0
        assert 0.0 <= row["hf_energy"] <= 1.0
    assert (finished_run / "reference" / "drift.json").exists()


def test_training_set_provenance(finished_run: Path):
    from chain_of_diffusion.data.imageset import image_path, read_metadata

    gen1 = finished_run / "gen_01" / "train_set"
    records = read_metadata(gen1)
    assert len(records) == 48
    assert {r["source"] for r in records} == {"synthetic"}
    assert {r["generation"] for r in records} == {0}
    assert all(image_path(gen1, r).is_file() for r in records)
    real = read_metadata(finished_run / "gen_00" / "train_set")
    assert {r["source"] for r in real} == {"real"}


def test_samples_load_as_an_imagefolder_dataset(finished_run: Path):
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(finished_run / "gen_01" / "samples"), split="train")
    assert len(ds) == 48
    assert ds[0]["image"].size == (16, 16)
    assert ds[0]["text"].startswith("a handwritten digit")
    assert "seed" in ds.column_names


def test_checkpoint_loads_with_diffusers(finished_run: Path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(finished_run / "gen_01" / "model", subfolder="unet")
    assert unet.config.sample_size == 16


def test_finished_run_does_nothing_and_says_so(finished_run: Path):
    before = (finished_run / "metrics.jsonl").read_bytes()
    mtime = (finished_run / "gen_01" / "samples").stat().st_mtime
    proc = cli(*SHARED_ARGS, f"output_dir={finished_run}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nothing to do" in proc.stdout
    assert "fd_classifier" in proc.stdout  # the metrics table
    assert (finished_run / "metrics.jsonl").read_bytes() == before
    assert (finished_run / "gen_01" / "samples").stat().st_mtime == mtime


def test_dry_run_prints_config_and_plan(tmp_path):
    proc = cli("--config", str(SMOKE), f"output_dir={tmp_path / 'x'}", "generations=3", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "generations: 3" in proc.stdout
    assert "gen 2 evaluate" in proc.stdout and "to run" in proc.stdout
    assert not (tmp_path / "x").exists()


# The chain under test, started as scripts/chain.py does, with one hook: right after the rename
# (os.replace/os.rename, which is how a checkpoint, a PNG and a finished stage land) that makes the kill
# point true, it writes a marker and stops itself (SIGSTOP). The test waits for the marker, however slow the
# machine, and sends the real SIGKILL: the kill falls exactly at the kill point, never a wall-clock guess.
STOP_AT_KILL_POINT = r"""
import os, signal, sys
target, need, marker = os.path.abspath(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
seen = 0

def hooked(original):
    def call(src, dst, *args, **kwargs):
        global seen
        result = original(src, dst, *args, **kwargs)
        where = os.path.abspath(dst)
        if where == target or os.path.dirname(where) == target:
            seen += 1
            if seen == need:
                with open(marker, "w") as f:
                    f.write(where)
                os.kill(os.getpid(), signal.SIGSTOP)
        return result
    return call

os.replace, os.rename = hooked(os.replace), hooked(os.rename)
from chain_of_diffusion.cli import main
sys.exit(main(sys.argv[4:]))
"""

# kill point -> (path under the run, how many renames onto or into it)
KILL_POINTS = {
    # a stage finished and committed, the next one not started
    "between-stages": ("gen_00/samples", 1),
    # generation 1's training wrote its first checkpoint (step 4 of 12)
    "inside-train": ("gen_01/.train_checkpoints/latest", 1),
    # generation 1's sampler wrote 10 of its 48 PNGs into the stage's temporary folder
    "inside-generate": ("gen_01/.tmp_samples", 10),
}


def _run_until(out: Path, rel: str, need: int, args: list[str], log: Path, env: dict | None = None,
               timeout: float = 600) -> str:
    """Run the chain with ``args`` into ``out`` until ``need`` renames onto or into ``out / rel`` happened,
    kill -9 it there; what it printed."""
    marker = out.parent / f"{out.name}.killed"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", STOP_AT_KILL_POINT, str(out / rel), str(need), str(marker), *args,
             f"output_dir={out}"],
            stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
        )
        deadline = time.monotonic() + timeout
        try:
            while not marker.exists():
                assert proc.poll() is None, f"the chain ended before {rel} ({need}):\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"{rel} ({need}) not reached in {timeout} s"
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    marker.unlink()
    return log.read_text()


def _kill_at(out: Path, kill_point: str, log: Path) -> str:
    """Run the shared run's chain into ``out`` until ``kill_point``, kill -9 it there; what it printed."""
    printed = _run_until(out, *KILL_POINTS[kill_point], SHARED_ARGS, log, env=ONE_THREAD)
    _check_killed_at(out, kill_point)
    return printed


def _check_killed_at(out: Path, kill_point: str) -> None:
    """The run directory as the kill left it: the kill point holds, the stage after it has not run."""
    if kill_point == "between-stages":
        assert (out / "gen_00" / "samples" / "metadata.jsonl").is_file()
        assert not (out / "gen_00" / "selected").exists()
    elif kill_point == "inside-train":
        assert (out / "gen_01" / ".train_checkpoints" / "latest").is_dir()
        assert not (out / "gen_01" / "model").exists()
    else:
        assert len(list((out / "gen_01" / ".tmp_samples").glob("*.png"))) >= 10  # some images, not all
        assert not (out / "gen_01" / "samples").exists()
    assert not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 2


def _resume_and_compare(out: Path, finished_run: Path) -> None:
    proc = run_cli(*SHARED_ARGS, f"output_dir={out}", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming" in proc.stdout
    assert (out / "metrics.jsonl").read_text() == (finished_run / "metrics.jsonl").read_text()
    for g in (0, 1):
        names = sorted(os.listdir(finished_run / f"gen_{g:02d}" / "samples"))
        assert len(names) == 49  # 48 images + metadata.jsonl
        for name in names:
            assert (out / f"gen_{g:02d}" / "samples" / name).read_bytes() == (
                finished_run / f"gen_{g:02d}" / "samples" / name
            ).read_bytes(), f"gen {g} {name}"


@pytest.mark.slow  # the default tier kills a process of a 2-process launch while generating and resumes (tests/test_distributed.py)
def test_kill_at_every_kind_of_point_in_turn_then_resume_gives_identical_run(finished_run: Path, tmp_path: Path):
    """One run killed -9 three times (at a stage boundary, inside training, inside generation), each
    time resumed by a new process: it ends byte-identical to the uninterrupted shared run."""
    out = tmp_path / "run"
    for i, kill_point in enumerate(("between-stages", "inside-train", "inside-generate")):
        printed = _kill_at(out, kill_point, tmp_path / f"kill{i}.log")
        assert ("resuming" in printed) == (i > 0), printed[-2000:]
    _resume_and_compare(out, finished_run)


@pytest.mark.slow  # each kill point alone (the test above kills at each in turn, in one run)
@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_resume_after_kill_gives_identical_metrics(finished_run: Path, tmp_path: Path, kill_point: str):
    out = tmp_path / "run"
    _kill_at(out, kill_point, tmp_path / "kill.log")
    _resume_and_compare(out, finished_run)


def test_second_process_on_the_same_output_dir_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    import filelock  # what the run directory's lock is made with: flock on Unix, LockFileEx on Windows

    with filelock.FileLock(str(out / ".lock"), timeout=0):
        proc = cli("--config", str(SMOKE), f"output_dir={out}", *TINY_OVERRIDES)
    assert proc.returncode == 2
    assert "in use by another running chain" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "config.yaml").exists()


def test_changed_config_on_an_existing_run_is_refused(finished_run: Path):
    before = (finished_run / "config.yaml").read_text()
    proc = cli(*SHARED_ARGS, f"output_dir={finished_run}", "train.lr=0.5")
    assert proc.returncode == 2
    assert "train.lr" in proc.stderr and "different config" in proc.stderr
    assert (finished_run / "config.yaml").read_text() == before


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_bad_config_key_and_generations(tmp_path):
    line = _one_error_line(cli(f"output_dir={tmp_path / 'a'}", "train.stepz=3"))
    assert "train.stepz" in line and "train.steps" in line
    line = _one_error_line(cli(f"output_dir={tmp_path / 'b'}", "generations=0"))
    assert "generations" in line
    line = _one_error_line(cli(f"output_dir={tmp_path / 'b'}", "generations=-1"))
    assert "generations" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _folder(tmp_path: Path, n: int = 60, broken: bool = False, uncaptioned: bool = False) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (20, 20), (i * 4 % 256, 0, 0)).save(folder / f"img{i:03d}.png")
        (folder / f"img{i:03d}.txt").write_text(f"a red square number {i % 3}")
    if broken:
        (folder / "img005.png").write_bytes(b"not a png at all")
    if uncaptioned:
        (folder / "img007.txt").unlink()
    return folder


@pytest.mark.parametrize("case", ["missing", "empty", "broken", "uncaptioned"])
def test_bad_data_folders(tmp_path, case):
    if case == "missing":
        path, expect = tmp_path / "nope", "does not exist"
    elif case == "empty":
        path, expect = tmp_path / "empty", "no images"
        path.mkdir()
    elif case == "broken":
        path, expect = _folder(tmp_path, broken=True), "img005.png"
    else:
        path, expect = _folder(tmp_path, uncaptioned=True), "img007"
    out = tmp_path / "run"
    line = _one_error_line(cli(
        "--config", str(SMOKE), f"output_dir={out}", *TINY_OVERRIDES, "data.source=imagefolder",
        f"data.path={path}", "metrics.features=pixels", "metrics.names=[memorization,entropy]",
    ))
    assert expect in line
    assert (out / "log.txt").is_file() and "Traceback" in (out / "log.txt").read_text()


def test_skip_mode_counts_broken_files(tmp_path):
    path = _folder(tmp_path, broken=True)
    out = tmp_path / "run"
    proc = run_cli(
        "--config", str(SMOKE), f"output_dir={out}", *TINY_OVERRIDES, *PLUMBING, "generations=1", "data.num_train=20",
        "data.num_heldout=20", "data.source=imagefolder", f"data.path={path}", "data.on_error=skip",
        "metrics.features=pixels", "metrics.names=[memorization,entropy]",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["num_skipped_files"] == 1


def _launch(out: Path, nproc: int, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "scripts" / "chain.py"), *SHARED_ARGS, f"output_dir={out}"]
    full_env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=600)


@pytest.mark.slow  # the default tier runs 2 processes as two machines against the same run (tests/test_distributed.py)
def test_two_processes_match_one_process_byte_for_byte(finished_run: Path, tmp_path):
    # the 1-process run is the shared one, made with 1 thread: bitwise equality needs equal per-process
    # thread counts, and torchrun gives each worker 1 thread
    one = finished_run
    assert json.loads((one / "env.json").read_text())["num_processes"] == 1
    two = _launch(tmp_path / "two", 2, {"ACCELERATE_USE_CPU": "1", **ONE_THREAD})
    assert two.returncode == 0, two.stderr[-3000:]
    env = json.loads((tmp_path / "two" / "env.json").read_text())
    assert env["num_processes"] == 2
    for g in (0, 1):
        names = sorted(os.listdir(one / f"gen_{g:02d}" / "samples"))
        assert len(names) == 49  # 48 images + metadata.jsonl
        for name in names:
            a = (one / f"gen_{g:02d}" / "samples" / name).read_bytes()
            b = (tmp_path / "two" / f"gen_{g:02d}" / "samples" / name).read_bytes()
            assert a == b, f"gen {g} {name}"
    assert (one / "metrics.jsonl").read_text() == (tmp_path / "two" / "metrics.jsonl").read_text()


def test_two_processes_without_cpu_flag_are_stopped(tmp_path):
    proc = _launch(tmp_path / "run", 2, {"ACCELERATE_USE_CPU": None})
    assert proc.returncode != 0
    assert "ACCELERATE_USE_CPU=1" in proc.stderr
    assert not (tmp_path / "run" / "gen_00").exists()


def test_batch_size_and_seed(finished_run: Path, tmp_path: Path):
    """Same seed, other generation batch size: the same bytes; another seed: other images.
    Each run stops once generation 0's samples are committed (the later stages do not change them)."""
    out = tmp_path / "run"
    _run_until(out, "gen_00/samples", 1, [*SHARED_ARGS, "sample.batch_size=7"], tmp_path / "run.log", env=ONE_THREAD)
    names = sorted(p.name for p in (finished_run / "gen_00" / "samples").glob("*.png"))
    assert len(names) == 48
    for name in names:
        assert (out / "gen_00" / "samples" / name).read_bytes() == (
            finished_run / "gen_00" / "samples" / name).read_bytes(), name
    other = tmp_path / "other"
    # pixel metrics: no classifier to train in the reference stage, which this check does not need
    _run_until(other, "gen_00/samples", 1, ["--config", str(SMOKE), *TINY_OVERRIDES, "seed=1",
                                           "metrics.features=pixels", "metrics.names=[memorization]"],
               tmp_path / "other.log")
    differing = sum((other / "gen_00" / "samples" / n).read_bytes() != (finished_run / "gen_00" / "samples" / n).read_bytes()
                    for n in names)
    assert differing == len(names)


def test_greedy_entropy_selection_keeps_the_budget(tmp_path: Path):
    out = tmp_path / "run"
    proc = run_cli("--config", str(SMOKE), "--config", str(ROOT / "configs" / "mitigations" / "greedy_entropy.yaml"),
                   f"output_dir={out}", *TINY_OVERRIDES, *PLUMBING, "generations=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    from chain_of_diffusion.data.imageset import read_metadata

    samples = read_metadata(out / "gen_00" / "samples")
    selected = read_metadata(out / "gen_00" / "selected")
    assert len(samples) == 96 and len(selected) == 48  # oversample 2, keep N
    assert sorted(r["score"] for r in selected) == list(range(48))
    assert all((out / "gen_00" / "selected" / r["file_name"]).is_file() for r in selected)


def test_run_made_before_a_new_config_key_still_resumes(finished_run: Path):
    # a run directory written before select.alpha existed: its fingerprint lacks the key
    path = finished_run / "fingerprint.json"
    original = path.read_text()
    old = json.loads(original)
    del old["select"]["alpha"]
    path.write_text(json.dumps(old))
    try:
        proc = cli(*SHARED_ARGS, f"output_dir={finished_run}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "nothing to do" in proc.stdout
        changed = cli(*SHARED_ARGS, f"output_dir={finished_run}", "select.alpha=0.5")
        assert changed.returncode == 2 and "select.alpha" in changed.stderr
    finally:
        path.write_text(original)


@pytest.mark.slow  # the default tier checks the latent filter's embeddings, probes and top-n (tests/select/test_latent.py)
def test_latent_filter_keeps_top_n_of_pooled_real_and_synthetic(tmp_path: Path):
    out = tmp_path / "run"
    proc = run_cli("--config", str(SMOKE), "--config", str(ROOT / "configs" / "mitigations" / "latent.yaml"),
                   f"output_dir={out}", *TINY_OVERRIDES, *PLUMBING, "generations=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    from safetensors.torch import load_file

    from chain_of_diffusion.data.imageset import read_metadata

    for g in (0, 1):
        selected = read_metadata(out / f"gen_{g:02d}" / "selected")
        assert len(selected) == 48  # N kept of 48 real + 48 synthetic
        assert all((out / f"gen_{g:02d}" / "selected" / r["file_name"]).is_file() for r in selected)
        assert all(0.0 <= r["score"] <= 1.0 for r in selected)  # the probe's probability of the own label
        real = [r for r in selected if r["source"] == "real"]
        assert all(r["generation"] == -1 and r["file_name"].startswith("../../real/train/") for r in real)
        assert all(r["source"] == "synthetic" and r["generation"] == g for r in selected if r not in real)
    # the next generation trains on the kept records, real ones included, and counts them as real
    stats = json.loads((out / "gen_01" / "train_set" / "stats.json").read_text())
    num_real = sum(r["source"] == "real" for r in read_metadata(out / "gen_00" / "selected"))
    assert stats["num_real"] == num_real and stats["num_train_images"] == 48
    # real embeddings and the probe were computed once, in gen_00/latent/; samples' next to their selection
    assert len(load_file(str(out / "gen_00" / "latent" / "unet_t100.safetensors"))) == 48
    # two probes, each fit without one fold of the real images (cross-fitting, select.latent_folds=2)
    assert sorted(p.name for p in (out / "gen_00" / "latent").glob("probe_*")) == [
        "probe_t100_fold0of2.safetensors", "probe_t100_fold1of2.safetensors"]
    assert len(load_file(str(out / "gen_01" / "selected" / "features_unet_t100.safetensors"))) == 48
