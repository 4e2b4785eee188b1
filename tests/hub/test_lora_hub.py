"""A Stable Diffusion LoRA chain on the Hub (issue 13): its base a Hub repo, every generation pushed; what is
pushed is what diffusers downloads and renders the chain's own sample with, and a pushed generation is the
base of a new chain (fused). Against the local Hub (tests/hub/local_hub.py)."""

import json

import numpy as np
import torch
import yaml
from conftest import ROOT, cli
from local_hub import TOKEN, USER, local_hub_fixture  # noqa: F401
from PIL import Image

LORA = ROOT / "configs" / "tiny_sd_lora.yaml"
BASE_REPO = f"{USER}/tiny-sd"
CHAIN_REPO = f"{USER}/lora-chain"
ONE_GEN = ["generations=1", "data.num_train=16", "data.num_heldout=16", "train.steps=4", "train.checkpoint_every=4",
           "train.log_every=2", "train.lr=1e-2", "train.lr_warmup_steps=1", "sample.steps=3",
           "metrics.features=pixels", "metrics.names=[memorization]"]


def _upload_folder(repo: str, folder) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=TOKEN)
    api.create_repo(repo)
    ops = [CommitOperationAdd(p.relative_to(folder).as_posix(), str(p)) for p in sorted(folder.rglob("*")) if p.is_file()]
    ops.append(CommitOperationAdd("README.md", b"---\nlicense: creativeml-openrail-m\n---\n# a base\n"))
    api.create_commit(repo, ops, commit_message="the base pipeline")


def test_a_pushed_lora_reproduces_the_chains_sample_and_continues_fused(local_hub, tiny_sd_pipeline, tmp_path,
                                                                         monkeypatch):
    from diffusers import StableDiffusionPipeline

    from chain_of_diffusion.models.pretrained import load_generation
    from chain_of_diffusion.processes.ddpm import make_scheduler

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    _upload_folder(BASE_REPO, tiny_sd_pipeline)
    run = tmp_path / "run"
    proc = cli("--config", str(LORA), f"output_dir={run}", f"model.pretrained={BASE_REPO}",
               f"hub.repo_id={CHAIN_REPO}", *ONE_GEN)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = local_hub.repo(CHAIN_REPO).files()
    assert "gen_00/pytorch_lora_weights.safetensors" in files
    from safetensors.torch import load as load_bytes

    from chain_of_diffusion.models.lora import kohya_state

    kohya = load_bytes(files["gen_00/kohya_lora.safetensors"])  # the export for ComfyUI / A1111, beside it
    expected = kohya_state(run / "gen_00" / "model")
    assert kohya.keys() == expected.keys() and any(k.startswith("lora_unet_") for k in kohya)
    assert all(torch.equal(kohya[k], expected[k]) for k in kohya)
    from huggingface_hub import ModelCard

    card = ModelCard.load(CHAIN_REPO, token=TOKEN).data
    assert card.base_model == BASE_REPO and card.license == "creativeml-openrail-m"  # the base's, which binds a LoRA

    # a user elsewhere: the base and generation 0's LoRA from the Hub, as the card's snippet says
    pipe = StableDiffusionPipeline.from_pretrained(BASE_REPO, token=TOKEN)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(CHAIN_REPO, revision="gen-00", weight_name="pytorch_lora_weights.safetensors", token=TOKEN)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    record = json.loads((run / "gen_00" / "samples" / "metadata.jsonl").read_text().splitlines()[0])
    pipe.scheduler = make_scheduler(cfg["sample"]["scheduler"], pipe.scheduler.config)
    theirs = pipe(record["text"], num_inference_steps=cfg["sample"]["steps"],
                  guidance_scale=cfg["sample"]["guidance_scale"],
                  generator=torch.Generator().manual_seed(record["seed"]), output_type="np").images[0]
    ours = np.asarray(Image.open(run / "gen_00" / "samples" / record["file_name"]).convert("RGB")) / 255.0
    assert np.abs(ours - theirs).max() <= 2 / 255

    # continued from the Hub: generation 0's LoRA merged into the base gives the same network
    fused = load_generation(f"{CHAIN_REPO}@gen-00")
    assert not any("lora" in name for name, _ in fused.unet.named_parameters())
    torch.manual_seed(0)
    x, t, text = torch.randn(2, 4, 4, 4), torch.tensor([10, 500]), torch.randn(2, 77, fused.unet.config.cross_attention_dim)
    with torch.no_grad():
        expected = pipe.unet(x, t, encoder_hidden_states=text).sample
        got = fused.unet(x, t, encoder_hidden_states=text).sample
    assert torch.allclose(got, expected, atol=1e-5)
    with torch.no_grad():
        pipe.unet.disable_lora()
        plain = pipe.unet(x, t, encoder_hidden_states=text).sample
    assert not torch.allclose(got, plain, atol=1e-4)  # the LoRA is in it: the check has teeth
