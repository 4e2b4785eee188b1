import json

import pytest
import torch

from chain_of_diffusion.config import ConfigError
from chain_of_diffusion.metrics.clip import (
    ClipWeightsError,
    clip_image_features,
    clip_score,
    clip_text_features,
    load_clip,
)

open_clip = pytest.importorskip("open_clip")

TINY = "cod-tiny-test-clip"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory):
    """A random-weight open-clip model registered under TINY, saved as a local checkpoint file."""
    folder = tmp_path_factory.mktemp("clip")
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder / f"{TINY}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained=None)
    path = folder / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path


def test_local_checkpoint_loads_those_weights(tiny_clip_file):
    clip = load_clip(TINY, str(tiny_clip_file))
    saved = torch.load(tiny_clip_file)
    key = next(k for k in saved if k.endswith("proj") or "proj" in k)
    assert torch.equal(clip.model.state_dict()[key], saved[key])
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    f_img = clip_image_features(clip, images)
    f_txt = clip_text_features(clip, ["a red square", "a digit", "a cat"])
    assert f_img.shape == (3, 32) and f_txt.shape == (3, 32)
    assert torch.allclose(f_img.norm(dim=1), torch.ones(3), atol=1e-5)
    assert 0.0 <= clip_score(f_img, f_txt) <= 100.0


def test_clip_score_formula():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])
    # cosines 1, 0.8, -1 -> 100 * max(cos, 0) = 100, 80, 0
    assert clip_score(a, b) == pytest.approx(60.0)
    with pytest.raises(ValueError):
        clip_score(a, b[:2])


def test_missing_weights_and_unknown_model_are_one_line_config_errors(tmp_path):
    with pytest.raises(ClipWeightsError) as err:
        load_clip("ViT-B-32", str(tmp_path / "missing.pt"))
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)
    assert "metrics.clip_pretrained" in str(err.value)
    with pytest.raises(ClipWeightsError, match="not an open-clip model"):
        load_clip("no-such-model", None)


def test_clip_score_and_fd_clip_through_the_suite(tiny_clip_file):
    from types import SimpleNamespace

    from chain_of_diffusion.metrics.suite import FeatureSpaces, MetricInputError, compute_metrics

    mcfg = SimpleNamespace(features="pixels", clip_model=TINY, clip_pretrained=str(tiny_clip_file), batch_size=4,
                           prdc_k=2, prdc_features="clip")
    spaces = FeatureSpaces(mcfg)
    g = torch.Generator().manual_seed(0)
    samples, real = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1, torch.rand(6, 3, 16, 16, generator=g) * 2 - 1
    out = compute_metrics(["clip_score", "fd_clip", "precision"], mcfg, spaces, samples,
                          lambda space: spaces(space, real), captions=[f"image {i}" for i in range(6)])
    assert 0.0 <= out["clip_score"] <= 100.0 and out["fd_clip"] > 0 and 0.0 <= out["precision"] <= 1.0
    itself = compute_metrics(["fd_clip"], mcfg, spaces, samples, lambda space: spaces(space, samples))
    assert abs(itself["fd_clip"]) < 1e-4
    with pytest.raises(MetricInputError, match="caption"):
        compute_metrics(["clip_score"], mcfg, spaces, samples, lambda s: None, captions=["only one"])


def test_an_embedding_does_not_depend_on_its_batch_mates(tiny_clip_file):
    """Fixed-size batches (the last one padded): the same bits alone, in a set, or split over processes."""
    clip = load_clip(TINY, str(tiny_clip_file))
    images = torch.rand(7, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    whole = clip_image_features(clip, images, batch_size=4)
    assert torch.equal(whole[5:], clip_image_features(clip, images[5:], batch_size=4))
    assert torch.equal(whole[2:3], clip_image_features(clip, images[2:3], batch_size=4))
    captions = [f"caption {i}" for i in range(5)]
    text = clip_text_features(clip, captions, batch_size=4)
    assert torch.equal(text[4:], clip_text_features(clip, captions[4:], batch_size=4))


def test_an_open_clip_failure_is_one_sentence_cut_at_a_word_and_logs_nothing(tmp_path, capfd):
    from chain_of_diffusion.metrics.clip import first_sentence

    long = RuntimeError("Failed to download file (x.bin) for a/b. Last error: " + "word " * 80)
    assert first_sentence(long) == "Failed to download file (x.bin) for a/b"
    cut = first_sentence(RuntimeError("a" * 10 + " " + "b" * 300))
    assert cut == "a" * 10 + " ..."
    # open-clip logs "ERROR:root:..." before raising; only our one line may reach the terminal
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipWeightsError):
        load_clip("ViT-B-32", str(bad))
    assert "ERROR:root" not in capfd.readouterr().err
