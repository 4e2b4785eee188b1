import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from chain_of_diffusion.select.latent import (
    LinearProbe,
    cross_fitted_scores,
    fit_probe,
    fixed_noise,
    knn_scores,
    probe_scores,
    stratified_folds,
    top_n,
    unet_embeddings,
)


def _unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4,
    ).eval()


SCHED = DDPMScheduler(num_train_timesteps=1000)
CTX = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(1))


def _images(n=6, seed=0):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_embeddings_are_pooled_mid_block_output_of_the_noised_image():
    unet, x0 = _unet(), _images()
    got = unet_embeddings(unet, SCHED, x0, t=100, seed=7, context=CTX)
    assert got.shape == (6, 16)  # the mid block's channels
    # the same by hand: noise with the fixed noise, run the whole UNet, read the mid block
    seen = []
    handle = unet.mid_block.register_forward_hook(lambda m, i, o: seen.append(o))
    xt = SCHED.add_noise(x0, fixed_noise((3, 8, 8), 7).expand_as(x0), torch.full((6,), 100))
    with torch.no_grad():
        unet(xt, torch.full((6,), 100), encoder_hidden_states=CTX.expand(6, -1, -1))
    handle.remove()
    torch.testing.assert_close(got, seen[0].mean(dim=(2, 3)))


def test_embeddings_skip_up_blocks_and_leave_no_hook():
    unet, calls = _unet(), []
    unet.up_blocks[0].register_forward_hook(lambda m, i, o: calls.append(1))
    unet_embeddings(unet, SCHED, _images(), t=10, seed=0, context=CTX)
    assert calls == []
    assert len(unet.mid_block._forward_hooks) == 0


def test_embedding_depends_on_the_image_only():
    unet, x0 = _unet(), _images(7)
    full = unet_embeddings(unet, SCHED, x0, t=100, seed=3, context=CTX, batch_size=64)
    torch.testing.assert_close(full, unet_embeddings(unet, SCHED, x0, t=100, seed=3, context=CTX, batch_size=2))
    torch.testing.assert_close(full[4:5], unet_embeddings(unet, SCHED, x0[4:5], t=100, seed=3, context=CTX),
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full, unet_embeddings(unet, SCHED, x0, t=100, seed=4, context=CTX))
    assert not torch.allclose(full, unet_embeddings(unet, SCHED, x0, t=900, seed=3, context=CTX))


def test_more_noise_makes_images_look_alike():
    unet, x0 = _unet(), _images(8)
    spread = {t: unet_embeddings(unet, SCHED, x0, t=t, seed=0, context=CTX).std(dim=0).mean() for t in (0, 999)}
    assert spread[999] < spread[0]


def test_embeddings_bad_t():
    with pytest.raises(ValueError, match="t must be"):
        unet_embeddings(_unet(), SCHED, _images(), t=1000, seed=0, context=CTX)


def _blobs(n_per=40, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 4
    labels = torch.arange(classes).repeat_interleave(n_per)
    return centres[labels] + torch.randn(len(labels), d, generator=g), labels


def test_probe_scores_own_label_high_and_wrong_label_low():
    x, y = _blobs()
    probe = fit_probe(x, y, seed=0)
    assert probe.classes.tolist() == [0, 1, 2]
    own = probe_scores(probe, x, y)
    assert own.shape == (120,) and own.mean() > 0.9
    wrong = probe_scores(probe, x, (y + 1) % 3)
    assert wrong.mean() < 0.1
    probs = probe.probabilities(x)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(120))
    assert (probs.argmax(dim=1) == y).float().mean() > 0.95


def test_probe_binary_and_state_round_trip_and_constant_feature():
    x, y = _blobs(classes=2)
    x[:, 0] = 3.0  # a feature that never varies must not divide by zero
    y = y * 5 + 2  # labels 2 and 7: classes need not be 0..K-1
    probe = fit_probe(x, y)
    assert probe.weight.shape == (2, 6) and probe.classes.tolist() == [2, 7]
    from sklearn.linear_model import LogisticRegression

    z = ((x.double() - x.double().mean(0)) / probe.scale.double()).numpy()
    ref = LogisticRegression(max_iter=2000).fit(z, y.numpy()).predict_proba(z)
    torch.testing.assert_close(probe.probabilities(x), torch.as_tensor(ref, dtype=torch.float32), atol=1e-4, rtol=0)
    again = LinearProbe.from_state(probe.state())
    torch.testing.assert_close(probe_scores(again, x, y), probe_scores(probe, x, y))


def test_probe_errors():
    x, y = _blobs()
    with pytest.raises(ValueError, match="2 classes"):
        fit_probe(x, torch.zeros(120, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fit_probe(x, y[:5])
    with pytest.raises(ValueError, match=r"labels \[9\]"):
        probe_scores(fit_probe(x, y), x[:2], torch.tensor([0, 9]))


def test_knn_scores_known_answer_and_self_skipped():
    ref = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    cand = torch.tensor([[0.0], [5.0], [0.0]])
    in_ref = torch.tensor([True, False, False])
    # the real point 0 skips itself (next: 1 away); 5 is 3 from 2; a synthetic copy of 0 is 0 away
    assert knn_scores(cand, ref, k=1, in_reference=in_ref).tolist() == [-1.0, -3.0, -0.0]
    assert knn_scores(cand, ref, k=2, in_reference=in_ref).tolist() == [-2.0, -4.0, -1.0]
    with pytest.raises(ValueError, match="k must be"):
        knn_scores(cand, ref, k=4)


def test_top_n_best_first_ties_to_lower_index():
    assert top_n(torch.tensor([0.1, 0.9, 0.5, 0.9, 0.2]), 3).tolist() == [1, 3, 2]


def test_stratified_folds_put_every_class_in_every_fold():
    labels = torch.tensor([0] * 7 + [1] * 4 + [2] * 1)
    fold = stratified_folds(labels, 2, seed=3)
    for c, size in ((0, 7), (1, 4)):
        counts = torch.bincount(fold[labels == c], minlength=2).tolist()
        assert sorted(counts) == [size // 2, size - size // 2]
    assert torch.equal(fold, stratified_folds(labels, 2, seed=3))  # seeded
    assert stratified_folds(labels, 1).eq(0).all()


def test_cross_fitting_removes_the_in_sample_bias_toward_real_images():
    # labels carry no signal: an honest probe gives real and synthetic candidates the same ~1/2,
    # but a probe scoring the very images it was fit on (D close to N) is sure of their labels
    gen = torch.Generator().manual_seed(0)
    real, synthetic = torch.randn(60, 40, generator=gen), torch.randn(60, 40, generator=gen)
    real_y, synthetic_y = torch.randint(0, 2, (60,), generator=gen), torch.randint(0, 2, (60,), generator=gen)
    one = cross_fitted_scores([fit_probe(real, real_y)], torch.zeros(60, dtype=torch.long), real, real_y,
                              synthetic, synthetic_y)
    assert one[:60].mean() > one[60:].mean() + 0.2  # the bias
    fold = stratified_folds(real_y, 2, seed=0)
    probes = [fit_probe(real[fold != f], real_y[fold != f]) for f in range(2)]
    two = cross_fitted_scores(probes, fold, real, real_y, synthetic, synthetic_y)
    assert abs(two[:60].mean() - two[60:].mean()) < 0.1
    # a real image's score is the probe's that never saw it
    f0 = torch.nonzero(fold == 0).squeeze(1)
    torch.testing.assert_close(two[f0], probe_scores(probes[0], real[f0], real_y[f0]))
