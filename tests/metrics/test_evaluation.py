"""The evaluate stage computes the suite's metrics inside a chain run (end to end)."""

import json

from conftest import SMOKE, TINY_OVERRIDES, run_cli


def test_chain_writes_drift_and_precision_recall(tmp_path):
    out = tmp_path / "run"
    names = "[fd_classifier,memorization,precision,recall,density,coverage,saturation,hf_energy,sharpness]"
    proc = run_cli("--config", str(SMOKE), f"output_dir={out}", *TINY_OVERRIDES, "generations=1",
                   f"metrics.names={names}", "metrics.prdc_features=pixels")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("fd_classifier", "memorization", "precision", "recall", "density", "coverage",
                "saturation_mean", "saturation_std", "hf_energy", "sharpness", "saturation_mean_reference",
                "hf_energy_reference", "sharpness_reference"):
        assert isinstance(row[key], float), key
    assert 0.0 <= row["precision"] <= 1.0 and 0.0 <= row["hf_energy"] <= 1.0
    assert (out / "reference" / "drift.json").exists()


def test_unknown_metric_name_is_a_config_error(tmp_path):
    proc = run_cli("--config", str(SMOKE), f"output_dir={tmp_path / 'run'}", "metrics.names=[fid]", "--dry-run")
    assert proc.returncode == 2
    assert "unknown metric 'fid'" in proc.stderr and "fid_inception" in proc.stderr
