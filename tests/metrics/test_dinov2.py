"""fd_dinov2: DINOv2 CLS features as dgm-eval takes them, from a tiny random Dinov2Model saved locally."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from chain_of_diffusion.config import ConfigError, load_config
from chain_of_diffusion.metrics.dinov2 import (
    Dinov2WeightsError,
    dinov2_features,
    find_dinov2_model,
    load_dinov2,
)
from chain_of_diffusion.metrics.suite import FeatureSpaces, compute_metrics, sample_spaces

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
# ImageNet statistics written out here, so the test pins them rather than re-reading the module's
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory):
    """A random-weight Dinov2Model saved with save_pretrained. Its 56-px position grid is smaller
    than the 224-px input, so the model interpolates it, as facebook/dinov2-large (518 px) does."""
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                       image_size=56, patch_size=14)
    torch.manual_seed(0)
    model = transformers.Dinov2Model(config).eval()
    folder = tmp_path_factory.mktemp("dinov2") / "tiny-dinov2"
    model.save_pretrained(folder)
    return folder


def _images(n, seed, size=20, channels=3):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _dgm_eval_input(image):
    """dgm-eval's DINOv2 transform of the PNG the image would be: 8-bit RGB, PIL bicubic 224, ImageNet norm."""
    arr = ((image.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    pil = Image.fromarray(arr[..., 0], "L") if arr.shape[-1] == 1 else Image.fromarray(arr, "RGB")
    pil = pil.convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def test_features_are_the_final_cls_token_of_dgm_eval_preprocessed_images(tiny_dinov2):
    model = load_dinov2(str(tiny_dinov2))
    saved = transformers.Dinov2Model.from_pretrained(tiny_dinov2).eval()
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in model.state_dict().items())  # its weights
    images = [*_images(3, 0).unbind(0), _images(1, 1, size=9, channels=1)[0]]  # mixed sizes, a grey one
    features = dinov2_features(model, images, batch_size=2)
    with torch.no_grad():
        out = saved(pixel_values=torch.stack([_dgm_eval_input(im) for im in images]), output_hidden_states=True)
    cls_after_norm = saved.layernorm(out.hidden_states[-1])[:, 0]
    assert features.shape == (4, 32) and features.dtype == torch.float32
    assert torch.allclose(features, cls_after_norm, atol=1e-5)
    assert torch.allclose(features, out.pooler_output, atol=1e-5)


def test_a_feature_does_not_depend_on_its_batch_mates(tiny_dinov2):
    model = load_dinov2(str(tiny_dinov2))
    images = _images(5, 2)
    whole = dinov2_features(model, images, batch_size=4)
    assert torch.equal(whole[4:], dinov2_features(model, images[4:], batch_size=4))
    assert torch.equal(whole[1:2], dinov2_features(model, images[1:2], batch_size=4))


def test_fd_dinov2_through_the_suite(tiny_dinov2):
    mcfg = SimpleNamespace(features="pixels", dinov2_model=str(tiny_dinov2), batch_size=4, prdc_k=2,
                           prdc_features="dinov2", names=["fd_dinov2", "precision"])
    assert sample_spaces(mcfg.names, mcfg) == ["dinov2"]  # sharded and cached by the evaluate stage
    spaces = FeatureSpaces(mcfg)
    samples, real = _images(6, 3), _images(6, 4) * 0.3  # another distribution: lower contrast
    out = compute_metrics(["fd_dinov2", "precision"], mcfg, spaces, samples, lambda space: spaces(space, real))
    assert out["fd_dinov2"] > 0 and 0.0 <= out["precision"] <= 1.0
    itself = compute_metrics(["fd_dinov2"], mcfg, spaces, samples, lambda space: spaces(space, samples))
    assert abs(itself["fd_dinov2"]) < 1e-4 * out["fd_dinov2"] + 1e-6


def test_reference_and_sample_features_are_cached_per_model(tiny_dinov2, tmp_path):
    from chain_of_diffusion.data.imageset import save_png, tensor_to_pil, write_metadata
    from chain_of_diffusion.metrics.evaluation import (
        ReferenceFolders,
        image_set_key,
        load_sample_features,
        reference_features,
        sample_features_sharded,
    )

    heldout = tmp_path / "real" / "heldout"
    heldout.mkdir(parents=True)
    records = []
    for i, pil in enumerate(tensor_to_pil(_images(4, 5, size=8))):
        save_png(pil, heldout / f"{i}.png")
        records.append({"file_name": f"{i}.png", "text": "x"})
    write_metadata(heldout, records)
    (tmp_path / "reference").mkdir()
    mcfg = SimpleNamespace(features="pixels", dinov2_model=str(tiny_dinov2), batch_size=4, prdc_k=2,
                           prdc_features=None, names=["fd_dinov2"])
    cfg, ref = SimpleNamespace(metrics=mcfg), ReferenceFolders(reference=tmp_path / "reference", heldout=heldout)
    held = reference_features(cfg, ref, FeatureSpaces(mcfg))("dinov2")
    (cached,) = (tmp_path / "reference").glob("features_dinov2_tiny-dinov2_*.safetensors")
    assert torch.equal(reference_features(cfg, ref, None)("dinov2"), held)  # read back, no extractor needed

    accelerator = SimpleNamespace(num_processes=1, is_main_process=True)
    samples = _images(3, 6)
    got = sample_features_sharded(cfg, samples, records[:3], tmp_path, accelerator, FeatureSpaces(mcfg))
    assert torch.equal(load_sample_features(tmp_path, cfg, "dinov2", image_set_key(records[:3])), got["dinov2"])
    # another checkpoint in a folder of the same name: not mistaken for this one's features
    other = SimpleNamespace(metrics=SimpleNamespace(**{**vars(mcfg), "dinov2_model": str(tmp_path / "x" / "tiny-dinov2")}))
    assert load_sample_features(tmp_path, other, "dinov2", image_set_key(records[:3])) is None


def test_missing_model_is_a_one_line_config_error_that_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for value, needle in ((str(tmp_path / "nowhere"), "no such folder"),
                          ("cod-test/no-such-dinov2", "Hugging Face cache"),
                          (str(tmp_path), "no config.json")):
        with pytest.raises(Dinov2WeightsError) as err:
            load_dinov2(value)
        msg = str(err.value)
        assert isinstance(err.value, ConfigError) and "\n" not in msg
        assert "metrics.dinov2_model" in msg and needle in msg and "hf download facebook/dinov2-large" in msg


def test_another_architecture_or_missing_weights_is_refused(tmp_path, tiny_dinov2):
    vit = transformers.ViTModel(transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                       intermediate_size=64, image_size=28, patch_size=14))
    vit.save_pretrained(tmp_path / "vit")
    with pytest.raises(Dinov2WeightsError, match="'vit' model, not 'dinov2'"):
        load_dinov2(str(tmp_path / "vit"))
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text((tiny_dinov2 / "config.json").read_text())
    with pytest.raises(Dinov2WeightsError, match="cannot load a Dinov2Model"):
        load_dinov2(str(tmp_path / "no_weights"))


def test_preflight_checks_the_model_before_a_chain_starts(tmp_path, tiny_dinov2):
    from chain_of_diffusion.preflight import run_preflight

    with pytest.raises(ConfigError, match="metrics.dinov2_model"):
        run_preflight(load_config([], ["metrics.names=[fd_dinov2]", f"metrics.dinov2_model={tmp_path / 'missing'}"]))
    with pytest.raises(ConfigError, match="metrics.dinov2_model"):  # precision/recall in DINOv2's space
        run_preflight(load_config([], ["metrics.names=[precision]", "metrics.prdc_features=dinov2",
                                       f"metrics.dinov2_model={tmp_path / 'missing'}"]))
    cfg = load_config([], ["metrics.names=[fd_dinov2]", f"metrics.dinov2_model={tiny_dinov2}",
                           "metrics.prdc_features=dinov2"])
    run_preflight(cfg)
    assert cfg.metrics.dinov2_model == str(tiny_dinov2)
    assert find_dinov2_model(cfg.metrics.dinov2_model) == str(tiny_dinov2)


# ---- scripts/evaluate.py folder mode ---------------------------------------------------------------
def _folder(path, n, seed, size=16):
    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path / f"{i}.png")
    return path


@pytest.fixture
def evaluate(capsys, monkeypatch):
    """scripts/evaluate.py's main in this process (a subprocess would spend ~10 s importing transformers)."""
    import importlib.util

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # main() sets it; restored after the test
    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def run(*args):
        code = module.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_evaluate_script_folder_mode(tmp_path, tiny_dinov2, evaluate):
    real, fake = _folder(tmp_path / "real", 5, 0), _folder(tmp_path / "fake", 5, 1, size=12)
    code, out, err = evaluate("--real", real, "--fake", fake, "--metrics", "fd_dinov2", "--json",
                              "--set", f"metrics.dinov2_model={tiny_dinov2}")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result) == {"fd_dinov2"} and result["fd_dinov2"] > 0

    code, out, err = evaluate("--real", real, "--fake", fake, "--metrics", "fd_dinov2",
                              "--set", f"metrics.dinov2_model={tmp_path / 'no-model'}")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("evaluate.py: error:") and "metrics.dinov2_model" in line and "hf download" in line
