import csv
import math

import pytest
import torch

import invflow
from detectors.baselines.pixelcnn import PixelCNNpp, discretized_logistic_log_mass
from detectors.objectives import outlier_objective
from detectors.scores import Likelihood, LikelihoodRatio
from invflow.data import bits_per_dim, preprocess
from invflow.train import Batch, Trainer

LOG256 = math.log(256)


def _model(c=1, size=4, levels=2, seed=0, filters=8, mixtures=3, noise=0.3, **kw):
    """A tiny float64 model with every parameter perturbed (so no structural zero hides a leak)."""
    torch.manual_seed(seed)
    m = PixelCNNpp(c, size, filters=filters, resnets=1, levels=levels, mixtures=mixtures, **kw).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(noise * torch.randn_like(p))
    return m.eval()


def _x(k: torch.Tensor) -> torch.Tensor:
    """8-bit values -> noise-free preprocessed float64 input."""
    return preprocess(k.to(torch.uint8), dequantize=False, dtype=torch.float64)


def _log_p(m, k):
    """log P(k) of 8-bit images."""
    with torch.no_grad():
        return m.log_prob(_x(k)) - k[0].numel() * LOG256


# ------------------------------------------------------------------ normalisation
def test_all_images_of_a_1x2_image_sum_to_one():
    m = _model(1, (1, 2), levels=1)
    k = torch.cartesian_prod(torch.arange(256), torch.arange(256)).view(-1, 1, 1, 2)
    lp = _log_p(m, k)
    assert torch.logsumexp(lp, 0).exp().item() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():  # the conditionals add up to the joint
        torch.testing.assert_close(m.pixel_log_probs(_x(k[:1000])).sum((1, 2, 3)), lp[:1000])


def test_discretized_logistic_bins_sum_to_one_even_in_the_tails():
    k = torch.arange(256).view(-1, 1)
    mean = torch.tensor([[-30.0, -1.0, 0.0, 0.37, 5.0]], dtype=torch.float64)
    for log_scale in (-7.0, -3.0, 0.0, 4.0, 200.0, 800.0):
        ls = torch.full_like(mean, log_scale)
        lp = discretized_logistic_log_mass(k, mean, ls)
        assert torch.isfinite(lp).all()
        zeros = torch.zeros(5, dtype=torch.float64)
        torch.testing.assert_close(torch.logsumexp(lp, 0), zeros, atol=1e-9, rtol=0)


@pytest.mark.parametrize("c,size,levels", [(1, 4, 3), (3, 2, 2)])
def test_every_conditional_sums_to_one(c, size, levels):
    m = _model(c, size, levels=levels, seed=1)
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (c, size, size), generator=g)
    # sub-pixel order: pixels in raster order, channels within a pixel
    order = [(ch, i, j) for i in range(size) for j in range(size) for ch in range(c)]
    k = base.repeat(len(order), 256, 1, 1, 1)  # [S, 256, C, H, W]
    for s, (ch, i, j) in enumerate(order):
        k[s, :, ch, i, j] = torch.arange(256)
    with torch.no_grad():
        cond = m.pixel_log_probs(_x(k.flatten(0, 1))).view(len(order), 256, c, size, size)
    for s, (ch, i, j) in enumerate(order):
        # P(k_i | k_<i) sums to one over the 256 values of sub-pixel i
        assert torch.logsumexp(cond[s, :, ch, i, j], 0).item() == pytest.approx(0.0, abs=1e-9)
        # and the conditionals of earlier sub-pixels do not depend on k_i
        earlier = torch.stack([cond[s, :, a, b, d] for (a, b, d) in order[:s]], 1) if s else None
        if earlier is not None:
            torch.testing.assert_close(earlier, earlier[:1].expand_as(earlier), atol=1e-12, rtol=0)
    # last sub-pixel: logsumexp_k log P(k) = log P(k_<last) from the other conditionals
    last = len(order) - 1
    joint = cond[last].sum((1, 2, 3))
    marginal = cond[last, 0].sum() - cond[last, 0][order[last]]
    assert torch.logsumexp(joint, 0).item() == pytest.approx(marginal.item(), abs=1e-9)


# ------------------------------------------------------------------ autoregressive masking
def _raster_mask(h, w, i, j):
    """True at pixels at or after (i, j) in raster order."""
    idx = torch.arange(h * w).view(h, w)
    return idx >= i * w + j


@pytest.mark.parametrize("c,size,levels", [(1, 8, 3), (3, 4, 2)])
def test_network_output_at_a_pixel_sees_only_earlier_pixels(c, size, levels):
    m = _model(c, size, levels=levels, seed=2)
    g = torch.Generator().manual_seed(1)
    v = (torch.rand(1, c, size, size, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    out = m.network(v)
    proj = torch.randn(out.shape[1], generator=g, dtype=torch.float64)
    reached_first = 0
    for i in range(size):
        for j in range(size):
            (grad,) = torch.autograd.grad((out[0, :, i, j] * proj).sum(), v, retain_graph=True)
            per_pixel = grad[0].abs().sum(0)  # [H, W], all channels of each pixel
            mask = _raster_mask(size, size, i, j)
            # nothing at or after pixel (i, j) -- not even other channels of pixel (i, j)
            assert per_pixel[mask].max().item() == 0.0, (i, j)
            # the left neighbour and the pixel above are seen (so the zero checks can fail)
            if j > 0:
                assert per_pixel[i, j - 1].item() > 0, (i, j)
            if i > 0:
                assert per_pixel[i - 1, j].item() > 0, (i, j)
            if (i, j) != (0, 0):
                reached_first += per_pixel[0, 0].item() > 0
    assert reached_first > size  # the receptive field reaches back to the first pixel often


def test_channels_of_a_pixel_enter_only_through_the_mixing_coefficients():
    m = _model(3, 2, levels=2, seed=3)
    k = torch.randint(0, 256, (1, 3, 2, 2), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = m.pixel_log_probs(_x(k))
        for ch in range(3):
            other = k.clone()
            other[0, ch, 1, 0] = (other[0, ch, 1, 0] + 97) % 256
            cond = m.pixel_log_probs(_x(other))
            same = torch.ones(3, 2, 2, dtype=torch.bool)
            same[ch:, 1, 0] = False  # later channels of the same pixel may change ...
            same[:, 1, 1] = False  # ... and so may the later pixel
            torch.testing.assert_close(cond[0][same], base[0][same], atol=1e-12, rtol=0)
            if ch < 2:  # the coefficients make the next channel depend on this one
                assert (cond[0, ch + 1, 1, 0] - base[0, ch + 1, 1, 0]).abs().item() > 1e-6
    # the coefficient matrices [B, M, C, C, H, W] are strictly lower triangular, in (-1, 1)
    with torch.no_grad():
        coefs = m._split(m.network(torch.rand(2, 3, 2, 2, dtype=torch.float64) * 2 - 1))[3]
    upper = torch.ones(3, 3, dtype=torch.bool).triu()
    assert coefs[:, :, upper].abs().max() == 0
    assert 0 < coefs[:, :, ~upper].abs().min() and coefs.abs().max() < 1


# ------------------------------------------------------------------ values
def test_dequantisation_invariance_and_bits_per_dim():
    m = _model(1, 4, levels=3, seed=4)
    k = torch.randint(0, 256, (6, 1, 4, 4), generator=torch.Generator().manual_seed(3)).to(torch.uint8)
    g = torch.Generator().manual_seed(4)
    centre = preprocess(k, dequantize=False, dtype=torch.float64)
    noisy = preprocess(k, dequantize=True, generator=g, dtype=torch.float64)
    lower = k.double() / 256 - 0.5  # u = 0, the lower bin edge
    with torch.no_grad():
        lp = m.log_prob(centre)
        torch.testing.assert_close(m.log_prob(noisy), lp, atol=0, rtol=0)
        torch.testing.assert_close(m.log_prob(lower), lp, atol=0, rtol=0)
        out = m(centre)
        torch.testing.assert_close(out.log_prob, lp)
        torch.testing.assert_close(out.per_scale, lp[:, None])
        assert out.latents == []
        log_p_k = m.pixel_log_probs(centre).sum((1, 2, 3))
        torch.testing.assert_close(lp, log_p_k + 16 * LOG256)
        expected_bpd = -log_p_k / (16 * math.log(2))
        torch.testing.assert_close(bits_per_dim(lp, 16), expected_bpd)
        torch.testing.assert_close(m.bits_per_dim(centre), expected_bpd)
        # x = 0.5 (the top edge) is k = 255
        top = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
        top_centre = torch.full((1, 1, 4, 4), 255.5 / 256 - 0.5, dtype=torch.float64)
        torch.testing.assert_close(m.log_prob(top), m.log_prob(top_centre), atol=0, rtol=0)


# ------------------------------------------------------------------ errors
def test_input_errors():
    m = _model(1, 4, levels=2)
    k = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    with pytest.raises(TypeError, match="preprocess"):
        m(k)
    with pytest.raises(TypeError):
        m(k.long())
    with pytest.raises(TypeError, match="dtype"):
        m(torch.zeros(2, 1, 4, 4, dtype=torch.float32))
    bad = [
        torch.zeros(2, 3, 4, 4),
        torch.zeros(2, 1, 4, 6),
        torch.zeros(1, 4, 4),
        torch.zeros(0, 1, 4, 4),
        torch.full((2, 1, 4, 4), float("nan")),
        torch.full((2, 1, 4, 4), float("inf")),
        torch.full((2, 1, 4, 4), 0.6),
        torch.full((2, 1, 4, 4), -0.51),
    ]
    for x in bad:
        with pytest.raises(ValueError):
            m(x.double())
        with pytest.raises(ValueError):
            m.pixel_log_probs(x.double())
    with pytest.raises(ValueError, match="channels"):
        m(torch.zeros(2, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="size"):
        m(torch.zeros(2, 1, 4, 6, dtype=torch.float64))
    with pytest.raises(ValueError):
        m.sample(0)
    with pytest.raises(ValueError):
        m.sample(2, temperature=0.0)


@pytest.mark.parametrize(
    "kw",
    [
        dict(in_channels=0),
        dict(filters=0),
        dict(resnets=0),
        dict(levels=0),
        dict(mixtures=0),
        dict(image_size=28, levels=4),
        dict(image_size=(28, 30), levels=3),
        dict(image_size=(28,)),
        dict(image_size=0),
        dict(dropout=1.0),
        dict(dropout=-0.1),
        dict(filters=2.5),
    ],
)
def test_constructor_errors(kw):
    with pytest.raises(ValueError):
        PixelCNNpp(**kw)


def test_levels_count_resolutions():
    PixelCNNpp(1, 28, levels=3, filters=2)  # 28, 14, 7
    PixelCNNpp(1, 7, levels=1, filters=2)  # no down-sampling: any size
    with pytest.raises(ValueError, match="2\\*\\*\\(levels - 1\\)"):
        PixelCNNpp(1, 7, levels=2, filters=2)


# ------------------------------------------------------------------ integration
def test_save_load_round_trip(tmp_path):
    m = _model(3, 4, levels=2, seed=5, dropout=0.2)
    path = tmp_path / "pcnn.safetensors"
    invflow.save(m, path)
    back = invflow.load(path).eval()
    assert isinstance(back, PixelCNNpp) and back.config() == m.config()
    x = _x(torch.randint(0, 256, (3, 3, 4, 4)))
    with torch.no_grad():
        torch.testing.assert_close(back.log_prob(x), m.log_prob(x), atol=0, rtol=0)


def test_trainer_runs(tmp_path):
    torch.manual_seed(0)
    m = PixelCNNpp(1, 4, filters=4, resnets=1, levels=2, mixtures=2, dropout=0.1)
    before = [p.detach().clone() for p in m.parameters()]
    images = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)
    summary = Trainer(
        m, images, out_dir=str(tmp_path), steps=3, batch_size=4, progress=False, checkpoint_every=3
    ).fit()
    assert summary["steps"] == 3 and summary["skipped"] == 0
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(math.isfinite(float(r["loss"])) for r in rows)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_detectors_use_it():
    m1, m2 = _model(1, 4, levels=2, seed=6), _model(1, 4, levels=2, seed=7)
    images = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    x = preprocess(images, dequantize=False, dtype=torch.float64)
    with torch.no_grad():
        lp1, lp2 = m1.log_prob(x), m2.log_prob(x)
    torch.testing.assert_close(Likelihood(m1).score(images), -lp1)
    torch.testing.assert_close(LikelihoodRatio(m1, m2).score(images), -(lp1 - lp2))
    # outlier loss objective (Schirrmeister et al. 2020 Eq. 2) with m2 as the general model
    m1.train()
    objective = outlier_objective(m2, images)
    g = torch.Generator().manual_seed(0)
    batch = Batch(x=preprocess(images, generator=g, dtype=torch.float64), generator=g)
    loss, logs = objective(m1, batch)
    assert torch.isfinite(loss) and "outlier" in logs
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m1.parameters())


def test_sample_shape_and_range():
    m = _model(3, 2, levels=2, seed=8)
    s = m.sample(4, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4, 3, 2, 2) and s.dtype == torch.float64
    assert s.min() >= -0.5 and s.max() < 0.5
    k = (s + 0.5) * 256 - 0.5
    torch.testing.assert_close(k, k.round())  # bin centres
    again = m.sample(4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, s, atol=0, rtol=0)
    with torch.no_grad():
        assert torch.isfinite(m.log_prob(s)).all()
    assert m.sample(2, temperature=0.5).shape == (2, 3, 2, 2)


@pytest.mark.parametrize("c,shape", [(2, (1, 1)), (1, (1, 2))])
def test_samples_follow_the_model(c, shape):
    """Moments of 4000 samples vs the exact moments by enumeration of all 65536 images
    (channel coefficients for C=2, the spatial conditional for the 1x2 image)."""
    m = _model(c, shape, levels=1, seed=9, noise=0.1)
    per = m.params_per_mixture
    with torch.no_grad():  # concentrated, well-separated logistics so the moments are informative
        bias = m.out.bias.view(m.mixtures, per)
        bias[:, 1 : 1 + c] = torch.linspace(-0.6, 0.6, m.mixtures * c, dtype=torch.float64).view(
            m.mixtures, c
        )
        bias[:, 1 + c : 1 + 2 * c] = -2.5
        if c == 2:
            bias[:, 1 + 2 * c :] = 0.8
    k = torch.cartesian_prod(torch.arange(256), torch.arange(256)).view(-1, c, *shape)
    p = _log_p(m, k).exp()
    k0, k1 = k.flatten(1)[:, 0].double(), k.flatten(1)[:, 1].double()
    n = 4000
    s = m.sample(n, generator=torch.Generator().manual_seed(1))
    ks = ((s + 0.5) * 256 - 0.5).round().flatten(1)
    for f, fs in ((k0, ks[:, 0]), (k1, ks[:, 1]), (k0 * k1, ks[:, 0] * ks[:, 1])):
        mean = (p * f).sum()
        se = ((p * (f - mean) ** 2).sum() / n).sqrt()
        assert abs(fs.mean() - mean) < 5 * se, (fs.mean().item(), mean.item(), se.item())
    cov = (p * k0 * k1).sum() - (p * k0).sum() * (p * k1).sum()
    assert abs(cov) > 10  # the second value depends on the first, so the joint moment is informative
