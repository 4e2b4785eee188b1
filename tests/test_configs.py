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
