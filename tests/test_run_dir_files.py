"""The run directory as a file system object: the permissions of what a chain writes, and an
output_dir that is a file or cannot be written (one line, exit 2, nothing lost)."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, cli
from test_chain import _one_error_line as _one_line

# a from-scratch chain of a few seconds that still writes every kind of file: safetensors (the model,
# the vector sets, cached features), PNG plots and grids, JSON, metrics.jsonl, report.html
DAE = ["--config", str(ROOT / "configs" / "scratch" / "dae_gaussian.yaml"), "generations=1", "train.steps=20",
       "data.num_train=200", "data.num_heldout=50"]
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes whatever the modes say
UNDER_UMASK_022 = "import os, sys; os.umask(0o022); from chain_of_diffusion.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def dae_run(tmp_path_factory) -> Path:
    """A finished one-generation DAE chain, run under umask 022 whatever the test runner's umask."""
    out = tmp_path_factory.mktemp("dae") / "run"
    proc = subprocess.run([sys.executable, "-c", UNDER_UMASK_022, *DAE, f"output_dir={out}"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_run_files_have_the_usual_permissions(dae_run: Path):
    files = [p for p in dae_run.rglob("*") if p.is_file()]
    expected = ["report.html", "metrics.jsonl", "state.json", "gen_00/model/unet/diffusion_pytorch_model.safetensors",
                "gen_00/samples/vectors.safetensors", "reference/heldout_features.safetensors"]
    for rel in expected:
        assert dae_run / rel in files, rel
    assert list((dae_run / "report_files").glob("*.png"))
    assert any(p.is_relative_to(dae_run / "gen_00") for p in files)
    wrong = sorted(f"{oct(stat.S_IMODE(p.stat().st_mode))} {p.relative_to(dae_run)}" for p in files
                   if stat.S_IMODE(p.stat().st_mode) != 0o644)
    assert not wrong, wrong  # 0o666 & ~0o022: every file readable by all, as a plain open() makes it


def test_output_dir_that_is_a_file_is_one_line(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("keep me\n")
    for out in (taken, taken / "sub" / "run"):
        line = _one_line(cli(*DAE, f"output_dir={out}"))
        assert "output_dir" in line and str(out) in line and "failed" not in line
        assert "is a file" in line or "not a folder" in line
    assert taken.read_text() == "keep me\n"  # nothing written over it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.skipif(AS_ROOT, reason="root writes into read-only folders")
def test_output_dir_in_a_folder_that_cannot_be_written_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = _one_line(cli(*DAE, f"output_dir={locked / 'run'}"))
        assert "output_dir" in line and str(locked / "run") in line and str(locked) in line
        assert not (locked / "run").exists()
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(AS_ROOT, reason="root writes into read-only folders")
def test_read_only_finished_run_still_shows_its_table(dae_run: Path):
    folders = [dae_run, *(p for p in dae_run.rglob("*") if p.is_dir())]
    before = {p: p.stat().st_mtime_ns for p in dae_run.rglob("*")}
    for folder in folders:
        folder.chmod(0o555)
    try:
        proc = cli(*DAE, f"output_dir={dae_run}")
        assert proc.returncode == 0, proc.stderr
        assert "nothing to do" in proc.stdout and "fd_pixels" in proc.stdout
        assert "Traceback" not in proc.stderr
        # and one with stages left names output_dir instead of failing on log.txt
        line = _one_line(cli(*DAE, f"output_dir={dae_run}", "generations=2"))
        assert "output_dir" in line and str(dae_run) in line and "log.txt" not in line
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert {p: p.stat().st_mtime_ns for p in dae_run.rglob("*")} == before


def test_training_checkpoints_have_the_usual_permissions(tmp_path):
    # accelerate writes its model file through safetensors (0600); a killed run's checkpoint sits in the
    # run directory until resumed, so it gets the same permissions as the run's other files
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from chain_of_diffusion.checkpoints import save_checkpoint
    from chain_of_diffusion.runs import file_mode

    accelerator = Accelerator(cpu=True)
    try:
        accelerator.prepare(torch.nn.Linear(2, 2))
        save_checkpoint(accelerator, tmp_path, {"progress": {"step": 1}})
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # as a new process would have it
    files = [p for p in (tmp_path / "latest").rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == file_mode() for p in files)
