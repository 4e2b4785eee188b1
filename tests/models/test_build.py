import torch

from chain_of_diffusion.config import ModelConfig
from chain_of_diffusion.models.build import (
    build_model,
    build_tokenizer,
    build_unet,
    encode_captions,
    load_model,
    save_model,
)


def test_tokenizer_matches_clip_ids():
    tok = build_tokenizer()
    ids = tok("a handwritten digit seven").input_ids
    # the ids openai/clip-vit-large-patch14 gives this caption
    assert ids == [49406, 320, 35192, 27472, 5757, 49407]
    assert tok.model_max_length == 77 and len(tok) == 49408


def test_sd15_layout_has_the_stable_diffusion_size():
    with torch.device("meta"):
        unet = build_unet(ModelConfig(arch="sd15"), resolution=512, cross_attention_dim=768, seed=0)
    params = sum(p.numel() for p in unet.parameters())
    assert unet.config.sample_size == 64 and unet.config.in_channels == 4
    assert abs(params - 859_520_964) < 1_000  # SD 1.5's UNet


def test_save_load_round_trip(tmp_path):
    model = build_model(ModelConfig(), resolution=16, seed=0)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    for a, b in zip(model.unet.parameters(), loaded.unet.parameters()):
        assert torch.equal(a, b)
    captions = ["a handwritten digit one", ""]
    assert torch.equal(encode_captions(model, captions), encode_captions(loaded, captions))
    assert loaded.vae is None


def test_same_seed_same_weights_different_seed_different():
    a = build_model(ModelConfig(), 16, seed=1).unet
    b = build_model(ModelConfig(), 16, seed=1).unet
    c = build_model(ModelConfig(), 16, seed=2).unet
    wa, wb, wc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_attention_choice():
    import pytest

    from chain_of_diffusion.models.build import ModelLoadError, set_attention

    unet = build_model(ModelConfig(), 16, seed=0).unet
    cpu = torch.device("cpu")
    assert set_attention(unet, "auto", cpu) == "sdpa"
    assert set_attention(unet, "sdpa", cpu) == "sdpa"
    with pytest.raises(ModelLoadError, match="xformers"):
        set_attention(unet, "xformers", cpu)


def test_rf_cifar_is_liu_et_als_cifar_unet_shape():
    """128 channels, multipliers 1,2,2,2, 2 residual blocks per level, attention only at 16x16 for 32 px."""
    unet = build_unet(ModelConfig(arch="rf_cifar"), resolution=32, cross_attention_dim=64, seed=0)
    assert unet.config.block_out_channels == (128, 256, 256, 256) and unet.config.layers_per_block == 2
    with_attention = [hasattr(block, "attentions") for block in unet.down_blocks]
    assert with_attention == [False, True, False, False]  # level 1: 32 / 2 = 16 px
    assert 25e6 < sum(p.numel() for p in unet.parameters()) < 60e6
    with torch.no_grad():
        out = unet(torch.zeros(1, 3, 32, 32), 10, encoder_hidden_states=torch.zeros(1, 2, 64)).sample
    assert out.shape == (1, 3, 32, 32)
