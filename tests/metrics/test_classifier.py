import time

import pytest
import torch
import torch.nn.functional as F

from chain_of_diffusion.metrics.classifier import (
    FeatureClassifier,
    accuracy,
    extract_features,
    load_classifier,
    save_classifier,
    train_classifier,
)


def digits_16px():
    """sklearn digits as (N, 3, 16, 16) in [-1, 1] and labels, split 1200 train / rest held out."""
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32) / 16.0 * 2.0 - 1.0
    x = F.interpolate(x[:, None], size=(16, 16), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1200], perm[1200:]
    return x[tr], y[tr], x[te], y[te]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: this net is too small to gain from more, and on a shared 2-core machine
    OpenMP threads spinning against another process made the same 600 steps ~20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return digits_16px()


@pytest.fixture(scope="module")
def trained(digits):
    x_tr, y_tr, _, _ = digits
    start = time.perf_counter()
    model = train_classifier(x_tr, y_tr, steps=600, seed=0)
    return model, time.perf_counter() - start


def test_digits_held_out_accuracy(trained, digits):
    model, seconds = trained
    _, _, x_te, y_te = digits
    acc = accuracy(model, x_te, y_te)
    print(f"held-out accuracy {acc:.4f} after {seconds:.1f} s")
    assert acc >= 0.99  # the README's figure (597 held-out digits: at most 5 wrong)
    assert not model.training


def test_save_load_round_trip(trained, digits, tmp_path):
    model, _ = trained
    x = digits[2][:100]
    save_classifier(model, tmp_path / "clf")
    assert (tmp_path / "clf" / "model.safetensors").is_file() and (tmp_path / "clf" / "config.json").is_file()
    loaded = load_classifier(tmp_path / "clf")
    assert not loaded.training
    assert torch.equal(extract_features(model, x), extract_features(loaded, x))


def test_same_seed_same_weights(digits):
    x, y = digits[0][:256], digits[1][:256]
    a = train_classifier(x, y, steps=5, seed=7, batch_size=32)
    b = train_classifier(x, y, steps=5, seed=7, batch_size=32)
    c = train_classifier(x, y, steps=5, seed=8, batch_size=32)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_training_leaves_global_rng_alone(digits):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_classifier(digits[0][:64], digits[1][:64], steps=2, seed=0, batch_size=32)
    assert torch.equal(torch.rand(3), expected)


def test_feature_shapes():
    model = FeatureClassifier(in_channels=1, resolution=32, num_classes=4, feature_dim=24)
    x = torch.rand(7, 1, 32, 32) * 2 - 1
    assert model(x).shape == (7, 4)
    assert extract_features(model, x, batch_size=3).shape == (7, 24)
    assert extract_features(model, x[:0]).shape == (0, 24)
