from pathlib import Path

import pytest

from chain_of_diffusion.config import load_config
from chain_of_diffusion.data.imageset import image_path, read_metadata, write_metadata
from chain_of_diffusion.data.sources import DataError
from chain_of_diffusion.mix import build_training_set, real_fraction_at
from chain_of_diffusion.runs import RunDir


def _image_set(folder: Path, n: int, source: str, generation: int, prefix: str) -> None:
    folder.mkdir(parents=True)
    records = []
    for i in range(n):
        (folder / f"{i:06d}.png").write_bytes(b"png")
        records.append({"file_name": f"{i:06d}.png", "text": f"{prefix} {i % 3}", "source": source,
                        "generation": generation, "index": i})
    write_metadata(folder, records)


@pytest.fixture
def run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "run")
    _image_set(run.real / "train", 10, "real", -1, "real")
    _image_set(run.real / "pool", 12, "real", -1, "pool")
    for g in range(3):
        _image_set(run.gen(g) / "samples", 10, "synthetic", g, f"gen{g}")
        write_metadata(run.stage_path(g, "selected"),
                       [{**r, "file_name": f"../samples/{r['file_name']}"} for r in read_metadata(run.gen(g) / "samples")])
    return run


def _mix(run, generation, *overrides):
    cfg = load_config([], ["generations=4", *overrides])
    into = run.gen(generation) / "train_set"
    into.mkdir(parents=True, exist_ok=True)
    records, stats = build_training_set(cfg, run, generation, into)
    assert all(image_path(into, r).is_file() for r in records)  # every record points at a real file
    return records, stats


def test_generation_zero_is_the_real_training_set(run):
    records, stats = _mix(run, 0)
    assert len(records) == 10 and stats["real_share"] == 1.0


def test_replace_uses_only_the_previous_generation(run):
    records, stats = _mix(run, 2)
    assert {r["generation"] for r in records} == {1}
    assert stats == {"num_train_images": 10, "num_real": 0, "num_synthetic": 10, "real_share": 0.0}


def test_replace_with_real_fraction(run):
    records, stats = _mix(run, 1, "mix.real_fraction=0.5")
    assert stats["num_real"] == 5 and stats["num_synthetic"] == 5
    assert len({r["file_name"] for r in records}) == 10


def test_accumulate_keeps_everything(run):
    records, _ = _mix(run, 3, "mix.policy=accumulate")
    assert len(records) == 40  # 10 real + 3 x 10 synthetic
    sub, stats = _mix(run, 3, "mix.policy=accumulate_subsample")
    assert len(sub) == 10 and set(r["file_name"] for r in sub) <= set(r["file_name"] for r in records)


def test_fresh_draws_unused_real_images_and_says_when_they_run_out(run):
    first, _ = _mix(run, 1, "mix.policy=fresh", "mix.real_fraction=0.5")
    second, _ = _mix(run, 2, "mix.policy=fresh", "mix.real_fraction=0.5")
    real1 = {r["file_name"] for r in first if r["source"] == "real"}
    real2 = {r["file_name"] for r in second if r["source"] == "real"}
    assert len(real1) == 5 and len(real2) == 5 and not real1 & real2
    with pytest.raises(DataError, match="has 2 left"):
        _mix(run, 3, "mix.policy=fresh", "mix.real_fraction=0.5")


def test_real_fraction_schedules():
    cfg = load_config([], ["generations=5", "mix.real_fraction=0.8", "mix.real_fraction_schedule=linear_decay"])
    assert [round(real_fraction_at(cfg, g), 3) for g in range(5)] == [1.0, 0.8, 0.6, 0.4, 0.2]
    cfg = load_config([], ["mix.real_fraction=0.8", "mix.real_fraction_schedule=exponential_decay"])
    assert [round(real_fraction_at(cfg, g), 3) for g in range(4)] == [1.0, 0.8, 0.4, 0.2]


def test_real_images_kept_by_a_selection_are_not_trained_on_twice(run):
    # the latent filter keeps real training images: its selected set has records pointing at them
    kept_real = [{**r, "file_name": f"../../real/train/{r['file_name']}", "score": 1.0}
                 for r in read_metadata(run.real / "train")[:4]]
    kept = kept_real + read_metadata(run.stage_path(0, "selected"))[:6]
    write_metadata(run.stage_path(0, "selected"), kept)
    records, stats = _mix(run, 1, "mix.policy=accumulate")
    assert len(records) == 16 and len({r["file_name"] for r in records}) == 16  # 10 real + 6 new synthetic
    assert stats["num_real"] == 10
    records, stats = _mix(run, 1, "mix.real_fraction=0.5")
    assert len({r["file_name"] for r in records}) == len(records) == 10
    assert stats["num_real"] == 5 + sum(1 for r in records if r.get("score") == 1.0)


def test_fresh_pool_too_small_is_refused_before_any_training(run, tmp_path):
    from conftest import SMOKE, TINY_OVERRIDES, run_cli

    from chain_of_diffusion.mix import check_fresh_pool

    check_fresh_pool(load_config([], ["generations=3", "mix.policy=fresh", "mix.real_fraction=0.5"]), run)  # 5 + 5 <= 12
    with pytest.raises(DataError, match=r"generations 1-3 need 15 unused real images \(5, 5, 5\) but the real pool has 12"):
        check_fresh_pool(load_config([], ["generations=4", "mix.policy=fresh", "mix.real_fraction=0.5"]), run)
    # through the entry point: one line, exit 2, and no generation was trained
    out = tmp_path / "fresh"
    proc = run_cli("--config", str(SMOKE), f"output_dir={out}", *TINY_OVERRIDES, "data.max_images=150",
                   "mix.policy=fresh", "mix.real_fraction=1.0", "generations=3")
    assert proc.returncode == 2 and "real pool has" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "gen_00").exists()
