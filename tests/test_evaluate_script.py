"""scripts/evaluate.py: run mode rewrites a run's metrics; folder mode; bad input -> one line, exit 2."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, call_main, load_script
from PIL import Image

SCRIPT = ROOT / "scripts" / "evaluate.py"


def run_evaluate(*args, timeout=300):
    """The script as a real process (each mode keeps one test that runs it so)."""
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def evaluate_in_process(*args):
    """``main(args)`` in this process: for the cases that stop early (bad input, --help)."""
    return call_main(load_script("evaluate").main, *args)


def _folder(path, n, seed, size=16, captions=False):
    path.mkdir()
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path / f"{i}.png")
        records.append({"file_name": f"{i}.png", "text": f"caption {i}"})
    if captions:
        (path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate.py: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_run_mode_rewrites_metrics_of_every_generation(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)  # the fixture is shared: work on a copy
    before = json.loads((run / "gen_00" / "metrics.json").read_text())
    names = ["saturation", "hf_energy", "sharpness", "precision", "recall", "density", "coverage"]
    proc = run_evaluate(run, "--metrics", *names, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [0, 1] == [r["generation"] for r in result["generations"]]
    for g, row in enumerate(rows):
        per_gen = json.loads((run / f"gen_{g:02d}" / "metrics.json").read_text())
        for key in ("saturation_mean", "saturation_mean_reference",
                    "hf_energy", "sharpness", "precision", "recall", "density", "coverage"):
            assert isinstance(row[key], float) and math.isfinite(row[key]) and per_gen[key] == row[key], key
    after = json.loads((run / "gen_00" / "metrics.json").read_text())
    for key, value in before.items():  # what was there stays (fd_classifier, bookkeeping)
        assert after[key] == value, key
    assert "hf_energy" in (run / "report.html").read_text()


# run mode with fid_inception/kid_inception (cached features reused, missing ones extracted and cached):
# tests/metrics/test_evaluation.py, on the small Inception chain it shares with the evaluate-stage tests


def test_run_mode_bad_input(tmp_path, finished_run):
    _one_line_error(evaluate_in_process(tmp_path, "--metrics", "fid_inception"), "not a chain run directory")
    _one_line_error(evaluate_in_process(finished_run, "--metrics", "nope"), "unknown metric 'nope'", "fid_inception")


def test_folder_mode_json_last_line(tmp_path):
    real, fake = _folder(tmp_path / "real", 8, 0), _folder(tmp_path / "fake", 8, 1, size=12)
    proc = run_evaluate("--real", real, "--fake", fake, "--metrics", "fd_classifier", "precision",
                        "saturation", "memorization", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"fd_pixels", "precision", "saturation_mean", "saturation_std", "memorization"}
    assert all(math.isfinite(v) for v in result.values()), result
    assert "mixed sizes" in proc.stderr  # 12 px fakes against 16 px reals: said, not silent


def test_folder_mode_bad_input(tmp_path):
    real = _folder(tmp_path / "real", 4, 0)
    one = _folder(tmp_path / "one", 1, 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(evaluate_in_process("--real", real, "--fake", empty), "no images")
    _one_line_error(evaluate_in_process("--real", real, "--fake", one, "--metrics", "fd_classifier"), "at least 2")
    _one_line_error(evaluate_in_process("--real", real, "--fake", real, "--metrics", "fidx"), "unknown metric",
                    "kid_inception")
    _one_line_error(evaluate_in_process("--real", real, "--fake", real, "--metrics", "clip_score"),
                    "clip_score needs captions")
    _one_line_error(evaluate_in_process("--real", real), "--real and --fake")


def test_folder_mode_without_inception_weights_says_how(tmp_path, monkeypatch):
    real = _folder(tmp_path / "real", 4, 0)
    env_home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(env_home))
    monkeypatch.setenv("CHAIN_OF_DIFFUSION_INCEPTION_WEIGHTS", "")
    proc = evaluate_in_process("--real", real, "--fake", real, "--metrics", "fid_inception")
    _one_line_error(proc, "fetch_inception.py", str(env_home))


@pytest.mark.parametrize("flag", ["--help"])
def test_help(flag):
    proc = evaluate_in_process(flag)
    assert proc.returncode == 0 and "usage" in proc.stdout.lower()
