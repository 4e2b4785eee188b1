import json
import subprocess
import sys

from conftest import ROOT, SMOKE, TINY_OVERRIDES

from chain_of_diffusion.metrics.compare import curves, last_generation_table, load_runs, variant_of


def _fake_run(folder, values):
    folder.mkdir(parents=True)
    rows = [{"generation": g, "fd_classifier": v, "fd_classifier_reference": 0.5} for g, v in enumerate(values)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_compare_groups_seeds_and_averages(tmp_path):
    runs = [_fake_run(tmp_path / "baseline" / "seed0", [1.0, 3.0]),
            _fake_run(tmp_path / "baseline" / "seed1", [2.0, 5.0]),
            _fake_run(tmp_path / "rediFine" / "seed0", [1.0, 2.0])]
    assert variant_of(runs[0]) == "baseline" and variant_of(tmp_path / "solo") == "solo"
    grouped = load_runs(runs)
    assert {k: len(v) for k, v in grouped.items()} == {"baseline": 2, "rediFine": 1}
    assert curves(grouped, "fd_classifier")["baseline"] == [(0, 1.5, 1.0, 2.0), (1, 4.0, 3.0, 5.0)]
    table = last_generation_table(grouped, ["fd_classifier"])
    assert "| baseline | 2 | 1 | 4 ± 1.4 |" in table and "| rediFine | 1 | 1 | 2 ± 0 |" in table
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), *map(str, runs),
                           "--out", str(tmp_path / "cmp")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cmp" / "fd_classifier.png").is_file()
    assert "fd_classifier.png" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_sweep_runs_every_variant_and_seed(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--config", str(SMOKE), "--variants",
         "baseline,rediFine", "--seeds", "1", "--out", str(out), *TINY_OVERRIDES, "generations=1"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for variant in ("baseline", "rediFine"):
        assert (out / variant / "seed0" / "metrics.jsonl").is_file()
    cfg = (out / "rediFine" / "seed0" / "config.yaml").read_text()
    assert "condition_drop: 0.1" in cfg and "guidance_schedule: linear" in cfg


def test_sweep_rejects_unknown_variant(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep.py"), "--variants", "magic"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "magic" in proc.stderr and "greedy_entropy" in proc.stderr
