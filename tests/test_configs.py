from pathlib import Path

import pytest

from chain_of_diffusion.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_scratch_digits_is_the_schema_default_with_condition_drop_for_its_cfg():
    import dataclasses

    cfg = load_config([CONFIGS / "scratch" / "digits.yaml"])
    assert cfg.sample.guidance_scale > 1 and cfg.train.condition_drop == 0.1
    default = load_config()
    assert cfg == dataclasses.replace(default, output_dir=cfg.output_dir,
                                      train=dataclasses.replace(default.train, condition_drop=0.1))


def test_quickstart_is_a_lora_chain_on_the_base_at_a_cfg_in_the_papers_range():
    cfg = load_config([CONFIGS / "quickstart.yaml"])
    assert (cfg.model.pretrained, cfg.data.source, cfg.train.mode, cfg.train.init) == (
        "base:digits", "digits_bold", "lora", "base")
    assert cfg.mix.policy == "replace" and 5 <= cfg.sample.guidance_scale <= 10
    assert "caption_accuracy" in cfg.metrics.names


MITIGATIONS = sorted((CONFIGS / "mitigations").glob("*.yaml"))
# configs/accelerate/ holds accelerate launch configs, not chain configs (test_accelerate_configs.py)
FULL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in ("mitigations", "accelerate"))


@pytest.mark.parametrize("path", FULL_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    assert load_config([path]).generations >= 1


BACKENDS = [CONFIGS / "quickstart.yaml", CONFIGS / "scratch" / "digits.yaml", CONFIGS / "sd15_chain.yaml",
            CONFIGS / "tiny_sd_lora.yaml"]


@pytest.mark.parametrize("preset", MITIGATIONS, ids=lambda p: p.stem)
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda p: p.stem)
def test_every_mitigation_preset_composes_with_every_backend(backend, preset):
    assert load_config([backend, preset]).generations >= 1


def test_rediFine_is_exactly_its_two_halves():
    halves = load_config([CONFIGS / "quickstart.yaml", CONFIGS / "mitigations" / "condition_drop.yaml",
                          CONFIGS / "mitigations" / "cfg_schedule.yaml"])
    both = load_config([CONFIGS / "quickstart.yaml", CONFIGS / "mitigations" / "rediFine.yaml"])
    assert halves == both
    drop = load_config([CONFIGS / "quickstart.yaml", CONFIGS / "mitigations" / "condition_drop.yaml"])
    assert drop.train.condition_drop == 0.1 and drop.sample.guidance_schedule == "constant"
    schedule = load_config([CONFIGS / "quickstart.yaml", CONFIGS / "mitigations" / "cfg_schedule.yaml"])
    assert schedule.train.condition_drop == 0.0 and schedule.sample.guidance_schedule == "linear"


def test_smoke_is_the_scratch_digits_chain_shrunk():
    smoke = load_config([CONFIGS / "smoke.yaml"])
    assert smoke.generations == 2
    assert smoke.data.source == "digits" and smoke.mix.policy == "replace"
    assert smoke.train.steps < load_config([CONFIGS / "scratch" / "digits.yaml"]).train.steps


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
