import pytest
import torch
from safetensors.torch import load_file

from chain_of_diffusion.config import TrainConfig
from chain_of_diffusion.models.lora import (
    LORA_WEIGHTS,
    add_lora,
    attach_saved_lora,
    load_lora_into,
    lora_state_dict,
    read_lora,
    save_lora,
)
from chain_of_diffusion.models.pretrained import load_pretrained

CFG = TrainConfig(mode="lora", init="base", lora_rank=2, lora_alpha=4)


def test_lora_freezes_the_base_and_trains_fp32_adapters(tiny_sd_pipeline):
    model = load_pretrained(str(tiny_sd_pipeline))
    model.unet.to(dtype=torch.bfloat16)  # the frozen base in the compute dtype
    params = add_lora(model.unet, CFG, seed=0)
    trainable = [n for n, p in model.unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in params)
    assert model.unet.conv_in.weight.dtype == torch.bfloat16 and not model.unet.conv_in.weight.requires_grad
    # B starts at zero: the adapted model is the base model until trained
    assert all(float(p.detach().abs().sum()) == 0 for n, p in model.unet.named_parameters() if "lora_B" in n)


def test_unknown_target_module_is_an_error(tiny_sd_pipeline):
    model = load_pretrained(str(tiny_sd_pipeline))
    bad = TrainConfig(mode="lora", init="base", lora_target_modules=["no_such_proj"])
    with pytest.raises(ValueError, match="no_such_proj"):
        add_lora(model.unet, bad, seed=0)


def _perturbed_adapter(pipeline, seed=1):
    model = load_pretrained(str(pipeline))
    add_lora(model.unet, CFG, seed=0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_save_read_and_load_round_trip(tiny_sd_pipeline, tmp_path):
    model = _perturbed_adapter(tiny_sd_pipeline)
    path = save_lora(model.unet, tmp_path, CFG)
    assert path.name == LORA_WEIGHTS and all(k.startswith("unet.") for k in load_file(path))
    saved = lora_state_dict(model.unet)
    # into a fresh adapter of the same shape (train.init=previous)
    other = load_pretrained(str(tiny_sd_pipeline))
    add_lora(other.unet, CFG, seed=5)
    load_lora_into(other.unet, tmp_path)
    for key, value in lora_state_dict(other.unet).items():
        assert torch.equal(value, saved[key]), key
    assert len(read_lora(tmp_path)) == len(saved)


def test_the_same_adapter_is_the_same_file(tiny_sd_pipeline, tmp_path):
    """The adapter config saved beside the weights lists its targets sorted: peft holds them in a set,
    whose order changed with each interpreter's string hashing (an FSDP run resumed in new processes
    wrote the same weights into another file)."""
    import json

    from safetensors import safe_open

    model = _perturbed_adapter(tiny_sd_pipeline)
    path = save_lora(model.unet, tmp_path, CFG)
    with safe_open(str(path), "pt") as saved:
        metadata = json.loads(saved.metadata()["lora_adapter_metadata"])
    targets = metadata["unet.target_modules"]
    assert targets == sorted(targets) and set(targets) == set(CFG.lora_target_modules)


def test_saved_lora_loads_for_inference_with_its_alpha(tiny_sd_pipeline, tmp_path):
    model = _perturbed_adapter(tiny_sd_pipeline)
    save_lora(model.unet, tmp_path, CFG)
    fresh = load_pretrained(str(tiny_sd_pipeline))
    attach_saved_lora(fresh.unet, tmp_path)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    emb = torch.randn(2, 77, fresh.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 500])
    base = load_pretrained(str(tiny_sd_pipeline))
    with torch.no_grad():
        ours = model.unet.eval()(x, t, encoder_hidden_states=emb).sample
        loaded = fresh.unet.eval()(x, t, encoder_hidden_states=emb).sample
        plain = base.unet(x, t, encoder_hidden_states=emb).sample
    assert torch.allclose(ours, loaded, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-3  # the adapter (alpha/rank = 2) is really applied


def test_prediction_type_comes_from_the_pipeline_scheduler(tmp_path):
    from chain_of_diffusion.config import ModelConfig
    from chain_of_diffusion.models.build import build_model
    from chain_of_diffusion.models.pretrained import objective_of, save_pipeline

    for objective, expected in (("eps", "eps"), ("v", "v")):
        folder = save_pipeline(build_model(ModelConfig(arch="tiny_sd", objective=objective), 32, seed=0),
                               tmp_path / objective)
        model = load_pretrained(str(folder))
        assert objective_of(model) == expected
        assert model.vae is not None and model.unet.config.in_channels == 4


def test_a_file_or_a_bad_name_is_not_a_pipeline(tmp_path):
    from chain_of_diffusion.models.build import ModelLoadError

    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_pretrained(str(tmp_path / "file.bin"))
    with pytest.raises(ModelLoadError, match="neither an existing folder nor a Hub id"):
        load_pretrained(str(tmp_path / "missing" / "deep" / "path"))


def test_a_lora_on_attention_and_convolutions_loads_back_whole(tmp_path):
    # diffusers' key conversion renames linear layers only: an adapter on resnet convolutions too was saved
    # with two key styles, and the loader dropped the attention half (the quickstart's LoRA sampled without it)
    import warnings

    from chain_of_diffusion.config import ModelConfig, TrainConfig
    from chain_of_diffusion.models.build import build_model
    from chain_of_diffusion.models.lora import add_lora, attach_saved_lora, save_lora

    cfg = TrainConfig(mode="lora", lora_rank=4, lora_target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"])
    trained = build_model(ModelConfig(arch="tiny"), 8, seed=0)
    add_lora(trained.unet, cfg, seed=1)
    with torch.no_grad():
        for name, p in trained.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    save_lora(trained.unet, tmp_path, cfg)
    loaded = build_model(ModelConfig(arch="tiny"), 8, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attach_saved_lora(loaded.unet, tmp_path)
    assert not [w for w in caught if "inconsistency" in str(w.message)]
    x, t, text = torch.randn(2, 3, 8, 8), torch.tensor([10, 500]), torch.randn(2, 77, 64)
    with torch.no_grad():
        expected = trained.unet.eval()(x, t, encoder_hidden_states=text).sample
        assert torch.equal(loaded.unet.eval()(x, t, encoder_hidden_states=text).sample, expected)
