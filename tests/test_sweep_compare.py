import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ONE_THREAD, ROOT, SHARED_METRICS, SMOKE, TINY_OVERRIDES, call_main, load_script

from chain_of_diffusion.metrics.compare import (
    change_table,
    curves,
    image_rows,
    last_generation_table,
    load_runs,
    per_generation_table,
    variant_of,
)


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
    assert "Every generation" not in (tmp_path / "cmp" / "comparison.md").read_text()


def test_change_is_taken_within_each_seed_and_image_rows_stack_real_then_generations(tmp_path):
    from PIL import Image

    runs = [_fake_run(tmp_path / "baseline" / "seed0", [1.0, 3.0]),
            _fake_run(tmp_path / "baseline" / "seed1", [2.0, 6.0])]
    # within a seed: +2 and +4, not the difference of the means over seeds alone
    assert "| baseline | 2 | +3 ± 1.4 |" in change_table(load_runs(runs), ["fd_classifier"])
    for part, shade in (("reference", 0), ("gen_00", 100), ("gen_01", 200)):
        (runs[0] / part).mkdir()
        Image.new("RGB", (20, 10), (shade,) * 3).save(runs[0] / part / "grid.png")
    [path] = image_rows(runs, tmp_path)
    sheet = Image.open(path)
    assert path.name == "grids_baseline.png" and sheet.size == (20, 3 * 10 + 2 * 6)
    assert [sheet.getpixel((5, y))[0] for y in (5, 21, 37)] == [0, 100, 200]


def test_compare_tables_every_generation_of_the_chosen_metrics(tmp_path):
    runs = [_fake_run(tmp_path / "reflow" / "seed0", [1.0, 3.0]),
            _fake_run(tmp_path / "reflow" / "seed1", [2.0, 5.0])]
    table = per_generation_table(load_runs(runs), ["fd_classifier"])
    assert "| reflow | 0 | 2 | 1.5 ± 0.71 |" in table and "| reflow | 1 | 2 | 4 ± 1.4 |" in table
    script = [sys.executable, str(ROOT / "scripts" / "compare.py"), *map(str, runs), "--out", str(tmp_path / "cmp")]
    proc = subprocess.run([*script, "--metrics", "fd_classifier"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "Every generation" in md and "| reflow | 1 | 2 | 4 ± 1.4 |" in md
    assert "fd_classifier_reference" not in md.split("![")[0]
    proc = subprocess.run([*script, "--metrics", "straightness"], capture_output=True, text=True)
    assert proc.returncode == 2 and "no run reports straightness" in proc.stderr


def _sweep(tmp_path, variants, seeds="1", timeout=900):
    """scripts/sweep.py on the shared run's config, 1 generation, 1 thread per chain (as the shared run)."""
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--config", str(SMOKE), "--variants", variants,
         "--seeds", seeds, "--out", str(out), *TINY_OVERRIDES, *SHARED_METRICS, "generations=1"],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **ONE_THREAD},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _pngs(run):
    return {p.name: p.read_bytes() for p in (run / "gen_00" / "samples").glob("*.png")}


def _check_rediFine(run, finished_run):
    assert (run / "metrics.jsonl").is_file()
    cfg = (run / "config.yaml").read_text()
    assert "condition_drop: 0.1" in cfg and "guidance_schedule: linear" in cfg
    # the chain's own output went to the run's sweep.log
    assert "run directory:" in (run / "sweep.log").read_text()
    # the preset really changed the samples: every image differs from the baseline's (the shared run
    # is the baseline at the same seed and settings; tests/test_chain.py checks that a 1-generation run
    # reproduces its gen_00 byte for byte)
    ours, baseline = _pngs(run), _pngs(finished_run)
    assert len(ours) == len(baseline) == 48 and ours.keys() == baseline.keys()
    assert all(ours[n] != baseline[n] for n in ours)


def test_sweep_runs_a_variant_through_the_real_chain(tmp_path, finished_run):
    """1 variant x 1 seed at the shared run's size; the slow tier runs 2 variants."""
    out = _sweep(tmp_path, "rediFine")
    assert sorted(p.name for p in out.iterdir()) == ["rediFine"]
    _check_rediFine(out / "rediFine" / "seed0", finished_run)


@pytest.mark.slow
def test_sweep_runs_every_variant_and_seed(tmp_path, finished_run):
    out = _sweep(tmp_path, "baseline,rediFine")
    for variant in ("baseline", "rediFine"):
        assert (out / variant / "seed0" / "metrics.jsonl").is_file()
        assert (out / variant / "seed0" / "sweep.log").is_file()
    # the baseline is the shared run's config: its images are the shared run's, byte for byte
    assert _pngs(out / "baseline" / "seed0") == _pngs(finished_run)
    _check_rediFine(out / "rediFine" / "seed0", finished_run)


# a stand-in for scripts/chain.py: as chatty as a chain's progress bars (far more than a pipe's 64 KiB),
# and failing on request with a last line to show
FAKE_CHAIN = r"""
import sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
out = Path(args["output_dir"])
for i in range(4000):
    sys.stderr.write(f"\rgen 0 train: {i:5d}/4000 " + "#" * 60)
sys.stderr.write("\n")
print("fake chain done", flush=True)
if args.get("fail") == "1":
    print("boom: the reason it failed", file=sys.stderr)
    sys.exit(3)
(out / "metrics.jsonl").write_text('{"generation": 0}\n')
"""


def _fake_sweep_root(tmp_path):
    root = tmp_path / "root"
    (root / "scripts").mkdir(parents=True)
    (root / "configs" / "mitigations").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "sweep.py", root / "scripts" / "sweep.py")
    (root / "scripts" / "chain.py").write_text(FAKE_CHAIN)
    return root


def test_sweep_streams_a_chatty_chain_to_its_log_instead_of_a_pipe(tmp_path):
    # ~300 KiB on stderr: with the output piped and read only after the child exits, the child blocks
    # on the full pipe and the sweep waits for it forever (the timeout turns that hang into a failure)
    root = _fake_sweep_root(tmp_path)
    out = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, str(root / "scripts" / "sweep.py"), "--seeds", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for seed in (0, 1):
        run = out / "baseline" / f"seed{seed}"
        assert (run / "metrics.jsonl").is_file()
        log = (run / "sweep.log").read_text()
        assert "fake chain done" in log and log.count("gen 0 train:") == 4000
    assert "baseline/seed1: done" in proc.stdout


def test_sweep_prints_the_last_lines_of_a_failed_chain(tmp_path):
    root = _fake_sweep_root(tmp_path)
    out = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, str(root / "scripts" / "sweep.py"), "--out", str(out), "fail=1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "baseline/seed0: FAILED (exit 3)" in proc.stdout
    assert str(out / "baseline" / "seed0" / "sweep.log") in proc.stdout
    tail = proc.stdout.split("FAILED", 1)[1]
    assert "boom: the reason it failed" in tail and "fake chain done" in tail
    assert len(tail.splitlines()) <= 22  # the last lines only, not the 300 KiB


def test_sweep_rejects_unknown_variant():
    proc = call_main(load_script("sweep").main, "--variants", "magic")
    assert proc.returncode == 2 and "magic" in proc.stderr and "greedy_entropy" in proc.stderr


def test_sweep_without_config_adds_presets_to_the_quickstart():
    # scripts/chain.py runs the quickstart only when given no --config: a preset alone would
    # silently run the preset over the schema's defaults, another chain than the baseline's
    import argparse

    sweep = load_script("sweep")
    args = argparse.Namespace(config=[], variants="baseline,rediFine", seeds=1, out="o", overrides=[])
    for _, _, cmd in sweep.commands(args):
        assert cmd[2:4] == ["--config", str(ROOT / "configs" / "quickstart.yaml")]
    assert sweep.commands(args)[1][2][4:6] == ["--config", str(ROOT / "configs" / "mitigations" / "rediFine.yaml")]
