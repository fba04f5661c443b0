"""detectors.experiments.analysis: pixel differences, Fourier mixing, correlations, latent / coupling plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

import invflow
from detectors.experiments import analysis as A

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1000


def smooth_images(n, size=12, seed=0):
    """Smooth uint8 images: random low-frequency sinusoid mixtures plus a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        f = rng.uniform(0.3, 1.5, 4)
        wave = np.sin(2 * np.pi * (f[0] * xx + f[1] * yy))
        img = 128 + 60 * wave + 40 * np.cos(2 * np.pi * f[2] * f[3] * xx)
        out.append(img + rng.normal(0, 2, img.shape))
    return torch.from_numpy(np.clip(np.stack(out), 0, 255).round().astype(np.uint8)).unsqueeze(1)


def noise_images(n, size=12, seed=1):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, size, size), dtype=np.uint8))


def perturbed_glow(**kw):
    torch.manual_seed(0)
    model = invflow.Glow(1, 8, levels=2, steps=1, hidden=8, **kw).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


# -- pixel differences ---------------------------------------------------------------------------
def test_pixel_differences_hand_computed():
    img = torch.tensor([[[[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 40]]]], dtype=torch.uint8)
    d = A.pixel_differences(img)
    assert d.shape == (1, 1, 2, 2)
    # pixel (1, 1) = 6, neighbours 1 2 3 5 7 9 10 11 -> mean 48 / 8 = 6
    assert d[0, 0, 0, 0] == pytest.approx(0.0)
    # pixel (2, 2) = 11, neighbours 6 7 8 10 12 14 15 40 -> mean 112 / 8 = 14
    assert d[0, 0, 1, 1] == pytest.approx(11 - 14.0)
    # pixel (1, 2) = 7, neighbours 2 3 4 6 8 10 11 12 -> 56 / 8 = 7
    assert d[0, 0, 0, 1] == pytest.approx(0.0)
    # pixel (2, 1) = 10, neighbours 5 6 7 9 11 13 14 15 -> 80 / 8 = 10
    assert d[0, 0, 1, 0] == pytest.approx(0.0)


def test_pixel_differences_3x3_and_float_scale():
    img = np.array([[0, 0, 0], [0, 80, 0], [0, 0, 16]], dtype=np.uint8)[None]  # [N, H, W]
    d = A.pixel_differences(img)
    assert d.shape == (1, 1, 1, 1) and d[0, 0, 0, 0] == pytest.approx(80 - 2.0)
    as_float = invflow.data.preprocess(torch.from_numpy(img), dequantize=False, dtype=torch.float64)
    np.testing.assert_allclose(A.pixel_differences(as_float), d, atol=1e-9)


def test_pixel_differences_constant_image_is_zero():
    d = A.pixel_differences(torch.full((2, 3, 5, 6), 77, dtype=torch.uint8))
    assert d.shape == (2, 3, 3, 4) and np.all(d == 0)


def test_pixel_differences_rejects_bad_input():
    with pytest.raises(ValueError):
        A.pixel_differences(torch.zeros(2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError):
        A.pixel_differences(torch.zeros(1, 1, 2, 5, dtype=torch.uint8))


def test_pixel_difference_model_density_and_likelihoods():
    train = smooth_images(40)
    model = A.PixelDifferenceModel(bins=100).fit(train)
    assert len(model.density_) == 100
    assert np.sum(model.density_ * np.diff(model.edges_)) == pytest.approx(1.0)
    d = A.pixel_differences(train)
    assert model.edges_[0] == pytest.approx(d.min()) and model.edges_[-1] == pytest.approx(d.max())
    # unseen extremes (outside the training range) stay finite, at the floor density
    extreme = np.array([[[0, 0, 0], [0, 255, 0], [0, 0, 0]]], dtype=np.uint8)[None]
    ll = model.log_likelihood(extreme)
    assert ll.shape == (1,) and np.isfinite(ll).all()
    assert ll[0] == pytest.approx(np.log(model.floor_))
    # smoother images get higher pseudo-likelihoods than noise, for every image
    ll_smooth = model.log_likelihood(smooth_images(20, seed=5))
    ll_noise = model.log_likelihood(noise_images(20))
    assert np.isfinite(ll_noise).all()
    assert ll_smooth.min() > ll_noise.max()
    np.testing.assert_allclose(model.score(noise_images(3)), -model.log_likelihood(noise_images(3)))


def test_pixel_difference_model_fixed_range_and_errors():
    model = A.PixelDifferenceModel(bins=10, range=(-5, 5)).fit(torch.full((2, 1, 4, 4), 3, dtype=torch.uint8))
    assert model.edges_[0] == -5 and model.edges_[-1] == 5
    # all 2 x 4 differences are zero -> bin [0, 1): (8 + 1) / (8 + 10) / width 1
    assert np.exp(model.log_density(np.array([0.5]))[0]) == pytest.approx(9 / 18)
    assert np.exp(model.log_density(np.array([-4.5]))[0]) == pytest.approx(1 / 18)
    with pytest.raises(RuntimeError):
        A.PixelDifferenceModel().log_likelihood(noise_images(1))
    with pytest.raises(ValueError):
        A.PixelDifferenceModel(alpha=0)


def test_plot_pixel_difference_histograms(tmp_path):
    path = tmp_path / "hist.png"
    A.plot_pixel_difference_histograms({"smooth": smooth_images(5), "noise": noise_images(5)}, str(path))
    assert_png(path)


# -- Fourier mixing ----------------------------------------------------------------------------------
def test_fourier_mix_identity_uint8_and_float():
    a = noise_images(3, size=8)
    assert torch.equal(A.fourier_mix(a, a), a)
    f = invflow.data.preprocess(smooth_images(2, size=8), dequantize=False, dtype=torch.float64)
    out = A.fourier_mix(f, f)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, f, atol=1e-9, rtol=0)


def test_fourier_mix_keeps_amplitudes_and_range():
    torch.manual_seed(0)
    a = torch.rand(2, 3, 8, 8, dtype=torch.float64) - 0.5
    p = torch.rand(2, 3, 8, 8, dtype=torch.float64) - 0.5
    raw = A.fourier_mix(a, p, clip=False)
    torch.testing.assert_close(torch.fft.fft2(raw).abs(), torch.fft.fft2(a).abs(), atol=1e-9, rtol=1e-9)
    # the phases are p's (where the amplitude is not tiny), not a's
    fp, fr = torch.fft.fft2((p + 0.5) * 256), torch.fft.fft2((raw + 0.5) * 256)
    big = fr.abs() > 1e-6
    torch.testing.assert_close(torch.exp(1j * fr.angle())[big], torch.exp(1j * fp.angle())[big])
    clipped = A.fourier_mix(a.float(), p.float())
    assert clipped.dtype == torch.float32 and clipped.shape == a.shape
    assert clipped.min() >= -0.5 and clipped.max() <= 0.5 - 1 / 256 + 1e-7
    u = A.fourier_mix(noise_images(2, 8), noise_images(2, 8, seed=3))
    assert u.dtype == torch.uint8 and u.shape == (2, 1, 8, 8)


def test_fourier_mix_rejects_mismatches():
    with pytest.raises(ValueError, match="shapes"):
        A.fourier_mix(noise_images(2, 8), noise_images(2, 12))
    with pytest.raises(TypeError):
        A.fourier_mix(noise_images(2, 8), noise_images(2, 8).double())


def test_plot_fourier_mix(tmp_path):
    a, p = noise_images(3, 8), smooth_images(3, 8)
    path = tmp_path / "mix.png"
    A.plot_fourier_mix(a, p, A.fourier_mix(a, p), str(path), n=2)
    assert_png(path)


# -- correlations -----------------------------------------------------------------------------------
def test_spearman_matches_scipy_and_nan_raises():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    b = b + a
    assert A.spearman(a, b) == pytest.approx(spearmanr(a, b)[0])
    assert A.spearman(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(spearmanr(a, b)[0])
    a2 = a.copy()
    a2[3] = -np.inf
    assert np.isfinite(A.spearman(a2, b))
    a2[4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        A.spearman(a2, b)
    with pytest.raises(ValueError):
        A.spearman(a, b[:10])
    assert np.isnan(A.spearman(np.ones(5), np.arange(5.0)))


def test_correlation_matrix_symmetric_unit_diagonal():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    scores = {"a": x, "b": x + rng.normal(size=40), "c": -x, "d": rng.normal(size=40)}
    names, m = A.correlation_matrix(scores)
    assert names == ["a", "b", "c", "d"] and m.shape == (4, 4)
    np.testing.assert_allclose(m, m.T)
    np.testing.assert_allclose(np.diag(m), 1.0)
    assert m[0, 2] == pytest.approx(-1.0)
    assert m[0, 1] == pytest.approx(spearmanr(scores["a"], scores["b"])[0])
    with pytest.raises(ValueError):
        A.correlation_matrix({"a": x, "b": x[:5]})


def test_per_scale_correlations():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(30, 3))
    b = a.copy()
    b[:, 2] = rng.normal(size=30)
    per = A.per_scale_correlations(a, b)
    assert len(per) == 3
    assert per[0] == pytest.approx(1.0) and per[1] == pytest.approx(1.0) and abs(per[2]) < 0.99
    summary = A.likelihood_correlations(torch.from_numpy(a), torch.from_numpy(b))
    assert summary["per_scale"] == pytest.approx(per)
    assert summary["early"] == pytest.approx(1.0)
    assert summary["total"] == pytest.approx(spearmanr(a.sum(1), b.sum(1))[0])
    with pytest.raises(ValueError):
        A.per_scale_correlations(a, b[:, :2])


def test_correlation_plots(tmp_path):
    rng = np.random.default_rng(3)
    names, m = A.correlation_matrix({"x": rng.normal(size=20), "y": rng.normal(size=20)})
    A.plot_correlation_matrix(names, m, str(tmp_path / "m.png"), title="test")
    a = rng.normal(size=(20, 2))
    A.plot_per_scale_correlations(
        a, a + rng.normal(size=(20, 2)), str(tmp_path / "s.png"), groups=["in"] * 10 + ["ood"] * 10
    )
    A.plot_scatter({"in": a[:, 0]}, {"in": a[:, 1]}, str(tmp_path / "sc.png"))
    for f in ("m.png", "s.png", "sc.png"):
        assert_png(tmp_path / f)


# -- latents and couplings --------------------------------------------------------------------------
def test_unsqueeze_latents_is_glow_layout():
    model = perturbed_glow()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64) - 0.5
    latents = model(x).latents
    full = A.unsqueeze_latents(latents, (1, 8, 8))
    assert full.shape == (2, 1, 8, 8)
    # with every scale's flow replaced by the identity, Glow's inverse only unsqueezes
    # (a model without parameters computes in the default dtype: float32 latents)
    model.scales = nn.ModuleList([invflow.Sequential() for _ in model.scales])
    torch.testing.assert_close(full.float(), model.inverse([z.float() for z in latents]), rtol=0, atol=0)
    assert A.unsqueeze_latents([torch.zeros(2, 5)], (5,)) is None


def test_coupling_st_records_reproduce_the_coupling():
    model = invflow.Glow(1, 8, levels=2, steps=1, hidden=8).double()
    torch.manual_seed(0)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64) - 0.5
    model.train()
    model(x)  # data-dependent actnorm initialisation
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    couplings = [(n, m) for n, m in model.named_modules() if isinstance(m, invflow.AffineCoupling)]
    outputs = {}
    hooks = [
        m.register_forward_hook(lambda mod, a, out, n=n: outputs.__setitem__(n, (a[0], out[0])))
        for n, m in couplings
    ]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    records = A.coupling_st(model, x)
    for h in hooks:
        h.remove()
    assert model.training  # mode restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [r["name"] for r in records] == [n for n, _ in couplings] and len(records) == 2
    for rec, (name, layer) in zip(records, couplings):
        inp, out = outputs[name]
        trans = layer.split[1]
        assert rec["s"].shape == rec["t"].shape == rec["x"].shape == inp[:, trans].shape
        assert rec["scale"] == "sigmoid"
        assert (rec["s"] > 0).all() and (rec["s"] < 1).all()
        torch.testing.assert_close(rec["x"], inp[:, trans])
        torch.testing.assert_close(out[:, trans], rec["s"] * rec["x"] + rec["t"])
    assert records[0]["s"].shape == (3, 2, 4, 4) and records[1]["s"].shape == (3, 4, 2, 2)
    # no hook is left behind
    assert all(not m.net._forward_hooks and not m._forward_pre_hooks for _, m in couplings)


def test_coupling_st_spatial_mask():
    layer = invflow.AffineCoupling(2, invflow.masks.Checkerboard(0), hidden=4, scale="exp").double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = layer

        def forward(self, x):
            return layer(x)

    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    (rec,) = A.coupling_st(Wrap(), x)
    assert rec["name"] == "c" and rec["s"].shape == x.shape
    torch.testing.assert_close(layer(x)[0], rec["s"] * x + rec["t"])


def test_latent_and_coupling_plots(tmp_path):
    model = perturbed_glow()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64) - 0.5
    out = A.plot_latents(model, x, str(tmp_path / "latents.png"), n=2)
    assert len(out.latents) == 2 and out.latents[0].shape[0] == 2
    A.plot_coupling_st(A.coupling_st(model, x), str(tmp_path / "st.png"), n=2)
    for f in ("latents.png", "st.png"):
        assert_png(tmp_path / f)
    with pytest.raises(ValueError):
        A.plot_coupling_st([], str(tmp_path / "none.png"))
