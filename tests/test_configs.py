from pathlib import Path

import pytest

from chain_of_diffusion.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_quickstart_yaml_is_the_embedded_default():
    assert load_config([CONFIGS / "quickstart.yaml"]) == load_config()


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config([CONFIGS / "quickstart.yaml", path])
    assert cfg.generations >= 1


def test_smoke_is_the_quickstart_shrunk():
    smoke = load_config([CONFIGS / "smoke.yaml"])
    assert smoke.generations == 2
    assert smoke.data.source == "digits" and smoke.mix.policy == "replace"
    assert smoke.train.steps < load_config().train.steps


# every from-scratch config, as shipped but at a toy size: what each needs beyond its YAML must not exist
TOY = ["generations=2", "data.num_train=32", "data.num_heldout=32", "train.steps=4", "train.batch_size=16",
       "train.lr_warmup_steps=1", "sample.steps=2", "metrics.classifier_steps=10"]


@pytest.mark.parametrize("path", sorted((CONFIGS / "scratch").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_scratch_config_runs_two_generations_at_a_toy_size(tmp_path, path):
    import json

    from conftest import cli

    out = tmp_path / "run"
    proc = cli("--config", str(path), f"output_dir={out}", *TOY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["generation"] for row in rows] == [0, 1]
    assert (out / "gen_01" / "grid.png").is_file() and (out / "report.html").is_file()
