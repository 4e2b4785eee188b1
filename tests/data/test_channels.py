"""data.channels: grey sources train and render one channel (auto), a pretrained pipeline keeps its own,
and runs made when every model was RGB still resume as RGB."""

import json

import pytest
import torch
from conftest import SMOKE, TINY_OVERRIDES, cli
from PIL import Image

from chain_of_diffusion.config import ConfigError, DataConfig, load_config
from chain_of_diffusion.schema import image_channels


@pytest.mark.parametrize("source, channels, expected", [
    ("digits", "auto", 1), ("digits_bold", "auto", 1), ("fashion_mnist", "auto", 1),
    ("emoji", "auto", 3), ("imagefolder", "auto", 3), ("digits", 3, 3), ("emoji", 1, 1),
])
def test_auto_is_grey_for_grey_sources_only(source, channels, expected):
    assert image_channels(DataConfig(source=source, channels=channels)) == expected


def test_another_channel_count_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"'data.channels': 2 is not one of auto, 1, 3"):
        load_config([], ["data.channels=2"])


def test_grey_from_rgb_is_the_grey_value_and_back():
    from chain_of_diffusion.models.build import as_channels

    grey = torch.linspace(-1, 1, 64).view(1, 1, 8, 8)
    rgb = grey.expand(-1, 3, -1, -1)
    assert torch.allclose(as_channels(rgb, 1), grey, atol=1e-6)
    assert torch.equal(as_channels(grey, 3), rgb)
    # a coloured pixel becomes its luma, as PIL's convert("L") computes it
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)
    assert as_channels(red, 1).item() == pytest.approx(0.299 * 2 - 1, abs=1e-6)


def test_a_grey_source_trains_and_renders_one_channel(finished_run):
    for folder in ("reference/base_model", "gen_00/model", "gen_01/model"):
        assert json.loads((finished_run / folder / "unet" / "config.json").read_text())["in_channels"] == 1, folder
    sample = sorted((finished_run / "gen_01" / "samples").glob("*.png"))[0]
    assert Image.open(sample).mode == "L"
    assert "trained as grey (1 channel) (data.channels=auto)" in (finished_run / "log.txt").read_text()


def test_a_pretrained_pipeline_renders_its_own_channels(tiny_sd_pipeline):
    from chain_of_diffusion.preflight import check_model_files

    cfg = load_config([], [f"model.pretrained={tiny_sd_pipeline}", "data.resolution=32", "train.init=base", "data.channels=1"])
    with pytest.raises(ConfigError, match=r"'data.channels': 1, but model.pretrained=.* renders 3 channel"):
        check_model_files(cfg)
    check_model_files(load_config([], [f"model.pretrained={tiny_sd_pipeline}", "data.resolution=32", "train.init=base"]))


def test_a_generation_takes_its_base_models_channels(tmp_path):
    """A run's base model (reference/base_model) decides the channels every generation trains in: a run
    made when every model was RGB goes on in RGB under data.channels=auto (the chain-level test: slow tier)."""
    from chain_of_diffusion.config import ModelConfig
    from chain_of_diffusion.models.build import build_model, encode_images, save_model
    from chain_of_diffusion.models.load import training_model

    for channels in (1, 3):
        save_model(build_model(ModelConfig(), 16, seed=0, channels=channels), tmp_path / f"base{channels}")
        model = training_model(load_config([], ["data.resolution=16"]), tmp_path / f"base{channels}", 0, None, torch.device("cpu"))
        assert model.unet.config.in_channels == model.image_channels == channels
        assert encode_images(model, torch.zeros(2, 3, 16, 16)).shape == (2, channels, 16, 16)


@pytest.mark.slow  # the default tier checks the base model's channels decide (above)
def test_a_run_made_before_data_channels_resumes_in_rgb(tmp_path):
    """Runs made when every model was RGB have no data.channels in their files: under auto they go on in
    RGB (their base model's channels), not as another config."""
    out = tmp_path / "run"
    args = [*TINY_OVERRIDES, "metrics.names=[fd_classifier]", f"output_dir={out}"]
    first = cli("--config", str(SMOKE), *args, "generations=1", "data.channels=3")
    assert first.returncode == 0, first.stderr[-2000:]
    for name in ("fingerprint.json", "config.yaml"):  # as a run of the version before data.channels wrote them
        text = (out / name).read_text()
        if name.endswith(".json"):
            saved = json.loads(text)
            del saved["data"]["channels"]
            text = json.dumps(saved)
        else:
            text = "\n".join(line for line in text.splitlines() if line.strip() != "channels: 3")
        (out / name).write_text(text)
    again = cli("--config", str(SMOKE), *args, "generations=2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "different config" not in again.stdout + again.stderr
    assert json.loads((out / "gen_01" / "model" / "unet" / "config.json").read_text())["in_channels"] == 3
    assert Image.open(sorted((out / "gen_01" / "samples").glob("*.png"))[0]).mode == "RGB"
