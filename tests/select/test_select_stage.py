"""The select stage end to end: the issue's composition of presets on the Stable Diffusion LoRA
backend (a random-weight tiny_sd pipeline), through the real entry point."""

import pytest
from conftest import ROOT, run_cli
from safetensors.torch import load_file

from chain_of_diffusion.config import load_config, selection_space
from chain_of_diffusion.data.imageset import read_metadata

CONFIGS = ROOT / "configs"
PRESETS = [CONFIGS / "mitigations" / "rediFine.yaml", CONFIGS / "mitigations" / "greedy_entropy.yaml"]


def test_presets_compose_with_the_sd15_chain_and_pick_a_space_every_backend_has():
    cfg = load_config([CONFIGS / "sd15_chain.yaml", *PRESETS])
    assert cfg.train.condition_drop == 0.1 and cfg.sample.guidance_schedule == "linear"
    assert cfg.select.method == "greedy_entropy" and cfg.select.oversample == 2.0
    assert selection_space(cfg) == "unet"  # no class labels in a captioned folder
    assert selection_space(load_config([CONFIGS / "quickstart.yaml", *PRESETS])) == "classifier"
    assert selection_space(load_config([CONFIGS / "scratch" / "digits.yaml", *PRESETS])) == "classifier"
    threshold = load_config([CONFIGS / "sd15_chain.yaml", CONFIGS / "mitigations" / "threshold_decay.yaml"])
    assert selection_space(threshold) == "unet"


@pytest.mark.slow  # the default tier runs greedy entropy on a chain (tests/test_chain.py) and LoRA chains (tests/test_lora_chain.py)
def test_rediFine_and_greedy_presets_on_a_lora_chain(tmp_path, tiny_sd_pipeline):
    out = tmp_path / "run"
    proc = run_cli("--config", str(CONFIGS / "tiny_sd_lora.yaml"), *(a for p in PRESETS for a in ("--config", str(p))),
                   f"output_dir={out}", f"model.pretrained={tiny_sd_pipeline}", "metrics.features=pixels",
                   "metrics.names=[fd_classifier,entropy]", "data.num_train=16", "data.num_heldout=16",
                   "train.steps=4", "train.checkpoint_every=4", "train.log_every=2", "sample.steps=3",
                   "select.latent_t=50")
    assert proc.returncode == 0, proc.stderr[-2000:]
    selected = read_metadata(out / "gen_00" / "selected")
    assert len(selected) == 16 and sorted(r["score"] for r in selected) == list(range(16))
    assert len(read_metadata(out / "gen_00" / "samples")) == 32  # oversample 2
    features = load_file(str(out / "gen_00" / "selected" / "features_unet_t50.safetensors"))
    assert len(features) == 32  # one per distinct sample image, keyed by content
    assert {v.shape for v in features.values()} == {next(iter(features.values())).shape}
    # generation 1 trained on what generation 0 kept
    train_1 = read_metadata(out / "gen_01" / "train_set")
    assert sorted(r["seed"] for r in train_1) == sorted(r["seed"] for r in selected)
    assert (out / "gen_01" / "selected" / "metadata.jsonl").is_file()
    # metrics judge the first N samples by index, as many as a variant without oversampling has
    from chain_of_diffusion.runs import RunDir
    from chain_of_diffusion.stages.evaluate import evaluated_sample_records

    cfg = load_config([out / "config.yaml"])
    evaluated = evaluated_sample_records(cfg, RunDir(out), 0)
    assert [r["index"] for r in evaluated] == list(range(16))
