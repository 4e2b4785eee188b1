"""model.objective=flow and dae through the same chain: config checks, and tiny runs end to end."""

import json
import math

import pytest
from conftest import SMOKE, TINY_OVERRIDES, cli

from chain_of_diffusion.config import load_config
from chain_of_diffusion.errors import ConfigError

SMALLER = [*TINY_OVERRIDES, "data.num_train=32", "data.num_heldout=32", "train.steps=8", "sample.steps=3",
           "metrics.classifier_steps=10"]


@pytest.mark.parametrize(("overrides", "key", "says"), [
    (["model.objective=flow"], "sample.scheduler", "'ddim' is a DDPM sampler"),
    (["model.objective=flow", "sample.scheduler=euler", "train.snr_gamma=5"], "train.snr_gamma", "Min-SNR"),
    (["model.objective=dae", "train.dae_sigma=0"], "train.dae_sigma", "> 0"),
    (["model.objective=flow", "sample.scheduler=heun", "train.t_sampling=beta"], "train.t_sampling", "logit_normal"),
    (["model.objective=dae", "select.method=greedy_entropy", "select.features=unet"], "select.method", "DDPM"),
    (["mix.policy=reflow"], "mix.policy", "not a flow"),
    (["model.objective=flow", "sample.scheduler=euler", "mix.policy=reflow", "mix.real_fraction=0.5"],
     "mix.real_fraction", "couplings only"),
])
def test_bad_combinations_name_the_key(overrides, key, says):
    with pytest.raises(ConfigError, match=f"config key '{key}'") as err:
        load_config([], overrides)
    assert says in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("objective", [
    ["model.objective=flow", "sample.scheduler=heun", "train.t_sampling=logit_normal", "generations=1"],
    ["model.objective=dae", "train.dae_sigma=0.3", "generations=1"],
], ids=["flow", "dae"])
def test_a_tiny_chain_runs_each_objective(tmp_path, objective):
    out = tmp_path / "run"
    proc = cli("--config", str(SMOKE), f"output_dir={out}", *SMALLER, *objective)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    for row in rows:
        assert math.isfinite(row["fd_classifier"]) and math.isfinite(row["train_loss"])
    assert "objective: " + objective[0].split("=")[1] in (out / "config.yaml").read_text()
    assert len(list((out / "gen_00" / "samples").glob("*.png"))) == 32


def test_reflow_trains_generation_1_on_the_couplings_of_generation_0(tmp_path):
    import numpy as np
    from PIL import Image

    from chain_of_diffusion.data.imageset import image_path, read_metadata, tensor_to_pil
    from chain_of_diffusion.generate import render
    from chain_of_diffusion.models.load import load_trained, process_for

    out = tmp_path / "run"
    proc = cli("--config", str(SMOKE), f"output_dir={out}", *SMALLER, "model.objective=flow", "sample.scheduler=euler",
               "mix.policy=reflow", "train.init=previous", "generations=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [json.loads((out / f"gen_{g:02d}" / "model" / "train_log.json").read_text()) for g in (0, 1)]
    assert [log["given_noise"] for log in logs] == [False, True]  # generation 1 trained on (z, ODE_0(z))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(row["straightness"]) and row["straightness"] > 0 for row in rows)
    # the coupling: the noise re-created from a record's seed, through generation 0's flow, is its image
    cfg = load_config([out / "config.yaml"], [])
    records = read_metadata(out / "gen_01" / "train_set")[:3]
    assert all(r["generation"] == 0 and r["source"] == "synthetic" for r in records)
    model = load_trained(cfg, out / "reference" / "base_model", out / "gen_00" / "model")
    again = render(model, records, cfg.sample, process=process_for(cfg, model))
    for record, image in zip(records, tensor_to_pil(again)):
        stored = np.asarray(Image.open(image_path(out / "gen_01" / "train_set", record)).convert("RGB"))
        assert np.array_equal(np.asarray(image.convert("RGB")), stored), record["file_name"]
