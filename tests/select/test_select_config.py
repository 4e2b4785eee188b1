"""The select.* config keys: the latent preset loads, bad values fail naming the key."""

from pathlib import Path

import pytest

from chain_of_diffusion.config import ConfigError, load_config
from chain_of_diffusion.preflight import run_preflight

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "mitigations"


def test_latent_preset_loads_with_documented_defaults():
    cfg = load_config([PRESETS / "latent.yaml"])
    assert (cfg.select.method, cfg.select.latent_t, cfg.select.latent_k, cfg.select.oversample) == ("latent", 100, 5, 1.0)


def test_unet_features_and_pass_size_accepted():
    cfg = load_config([], ["select.method=threshold_decay", "select.features=unet", "select.pass_size=10"])
    assert (cfg.select.features, cfg.select.pass_size) == ("unet", 10)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["select.method=latent", "select.latent_t=1000"], "select.latent_t"),
        (["select.method=latent", "select.latent_t=-1"], "select.latent_t"),
        (["select.method=greedy_entropy", "select.features=unet", "model.num_train_timesteps=50"], "select.latent_t"),
        (["select.method=latent", "select.latent_k=0"], "select.latent_k"),
        (["select.pass_size=0"], "select.pass_size"),
        (["select.features=vgg"], "select.features"),
    ],
)
def test_bad_select_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_config([], overrides)
    assert "\n" not in str(err.value)


def test_latent_t_not_checked_when_unused():
    # a short schedule is fine when nothing embeds with the UNet
    assert load_config([], ["model.num_train_timesteps=50"]).select.latent_t == 100


def test_inception_features_without_weights_name_the_key_and_the_spaces_that_work(tmp_path, monkeypatch):
    monkeypatch.delenv("CHAIN_OF_DIFFUSION_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # validate checks values only: the weights are looked for by the preflight, before any work
    cfg = load_config([], ["select.method=greedy_entropy", "select.features=inception"])
    with pytest.raises(ConfigError, match=r"select\.features.*pixels, classifier, unet") as err:
        run_preflight(cfg)
    assert "\n" not in str(err.value)
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"x")  # only its existence is checked before the run
    cfg = load_config([], ["select.method=greedy_entropy", "select.features=inception",
                           f"metrics.inception_weights={weights}"])
    run_preflight(cfg)
    assert cfg.select.features == "inception"
    # a method that measures no distances needs no weights
    run_preflight(load_config([], ["select.method=random", "select.features=inception"]))


def test_clip_features_without_weights_fail_before_the_run(tmp_path):
    # offline (the tests set HF_HUB_OFFLINE) and ViT-B-32/openai is not in this machine's Hub cache
    with pytest.raises(ConfigError, match=r"select\.features.*hf download timm/vit_base_patch32_clip_224\.openai") as err:
        run_preflight(load_config([], ["select.method=threshold_decay", "select.features=clip"]))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="tags: openai"):
        run_preflight(load_config([], ["select.method=greedy_entropy", "select.features=clip",
                                       "metrics.clip_pretrained=nonsense"]))
    weights = tmp_path / "clip.pt"
    weights.write_bytes(b"x")  # a local checkpoint file: only its existence is checked before the run
    cfg = load_config([], ["select.method=greedy_entropy", "select.features=clip", f"metrics.clip_pretrained={weights}"])
    run_preflight(cfg)
    assert cfg.select.features == "clip"


def test_config_imports_nothing_of_the_metrics_package():
    # config validates values only; the metrics package (torch) is not pulled in by loading a config
    import subprocess
    import sys

    code = ("import sys; from chain_of_diffusion.config import load_config; "
            "load_config([], ['select.method=greedy_entropy', 'select.features=dinov2', "
            "'metrics.names=[fd_dinov2]']); "
            "print(sorted(m for m in sys.modules if m.startswith('chain_of_diffusion.metrics') or m == 'torch'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
