import numpy as np
import pytest
from PIL import Image

from chain_of_diffusion.config import ConfigError
from chain_of_diffusion.metrics import tracking
from chain_of_diffusion.metrics.tracking import log_generation, open_tracker


def test_tensorboard_gets_metrics_per_generation_and_the_grid(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Image.fromarray(np.full((8, 16, 3), 200, np.uint8)).save(tmp_path / "grid.png")
    log_generation("tensorboard", tmp_path, {"generation": 0, "fid_inception": 12.5, "note": None}, tmp_path / "grid.png")
    log_generation("tensorboard", tmp_path, {"generation": 1, "fid_inception": 20.0, "flag": True})
    ea = EventAccumulator(str(tmp_path / "tensorboard" / "chain"))
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("fid_inception")] == [(0, 12.5), (1, 20.0)]
    assert ea.Tags()["images"] == ["samples"] and "note" not in ea.Tags()["scalars"]
    assert "flag" not in ea.Tags()["scalars"]


def test_none_and_missing_package(tmp_path, monkeypatch):
    assert open_tracker("none", tmp_path) is None
    monkeypatch.setitem(tracking.PACKAGES, "tensorboard", "no_such_package_xyz")
    with pytest.raises(ConfigError, match="metrics.tracker.*pip install"):
        open_tracker("tensorboard", tmp_path)


def test_log_pending_logs_each_generation_once(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from chain_of_diffusion.metrics.tracking import log_pending, logged_path

    rows = [{"generation": 0, "fd_classifier": 3.0}]
    assert log_pending("tensorboard", tmp_path, rows) == [0]
    rows.append({"generation": 1, "fd_classifier": 4.0})
    assert log_pending("tensorboard", tmp_path, rows) == [1]  # a resume: only the new generation
    assert log_pending("tensorboard", tmp_path, rows) == []  # nothing to do: nothing twice
    assert log_pending("none", tmp_path, rows) == []
    ea = EventAccumulator(str(tmp_path / "tensorboard" / "chain"))
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("fd_classifier")] == [(0, 3.0), (1, 4.0)]
    assert logged_path(tmp_path, "tensorboard").read_text().strip() == "[0, 1]"


def test_wandb_offline_gets_metrics_per_generation_and_the_grid(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network, no account: the run stays in <output_dir>/wandb
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))

    Image.fromarray(np.full((8, 16, 3), 200, np.uint8)).save(tmp_path / "grid.png")
    log_generation("wandb", tmp_path, {"generation": 0, "fid_inception": 12.5, "note": None}, tmp_path / "grid.png")
    log_generation("wandb", tmp_path, {"generation": 1, "fid_inception": 20.0, "flag": True})
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    run_id = tracking.wandb_run_id(tmp_path, "chain")
    # one directory per open, all of one resumed run (one id), so the generations make one curve; wandb
    # appends "-1" to the second directory's name when both opens fall in the same second
    assert len(runs) == 2 and all(f"-{run_id}" in path.name for path in runs)
    records = b"".join(next(path.glob("run-*.wandb")).read_bytes() for path in runs)
    assert b"fid_inception" in records and b"samples" in records and b"flag" not in records
    assert len(list(runs[0].glob("files/media/images/samples_0_*.png"))) == 1
