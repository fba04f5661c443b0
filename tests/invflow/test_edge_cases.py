"""Faults users of other flow libraries reported, each fixed across its kind: data-dependent
init on zero variance, ActNorm under torch.distributed, numeric arguments, low precision,
input range, untrained models warn (the invflow side)."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import invflow
import invflow.train
from invflow import nets
from invflow.layers import UninitializedWarning
from invflow.nets import CONSTANT_STD
from invflow.validation import check_number


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threads only add contention on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def images(b, c=1, size=8, seed=0, dtype=torch.float64):
    """Preprocessed 8-bit images in [-0.5, 0.5) (the models' input range)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 256, (b, c, size, size), generator=g, dtype=torch.uint8)
    return invflow.data.preprocess(k, generator=g, dtype=dtype)


# ------------------------------------------------------------------ 1: zero variance
@pytest.mark.parametrize("make", [lambda: invflow.ActNorm(2), lambda: nets.ActNorm2d(2)])
def test_init_batch_with_one_value_per_channel_is_refused(make):
    layer = make().train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.tensor([[0.3, -1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, 2, 1, 1, dtype=torch.float64))
    assert not bool(layer.initialized)
    layer(torch.randn(1, 2, 2, 1, dtype=torch.float64))  # 2 values per channel: fine
    assert bool(layer.initialized)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_channels_keep_scale_one_and_others_are_normalised(dtype):
    a = invflow.ActNorm(3).to(dtype).train()
    x = torch.stack([torch.full((8,), 0.3), torch.linspace(-1, 1, 8), torch.zeros(8)], 1).to(dtype)
    y, _ = a(x)
    assert a.log_scale[0].item() == 0.0 and a.log_scale[2].item() == 0.0
    torch.testing.assert_close(
        a.bias.detach(), torch.tensor([-0.3, 0.0, 0.0], dtype=dtype), atol=1e-6, rtol=0
    )
    std = torch.linspace(-1, 1, 8, dtype=torch.float64).std(unbiased=False)
    assert a.log_scale[1].item() == pytest.approx(-math.log(std + 1e-6), rel=1e-6)
    # a fresh input is mapped to a bounded value, and the log-density stays moderate
    fresh = torch.tensor([[0.4, 0.5, 0.1]], dtype=dtype)
    z, ld = a.eval()(fresh)
    assert z.abs().max() < 2 and abs(ld.item()) < 10
    assert CONSTANT_STD * (1 + 0.3) < 1e-3  # documented tolerance far below any real spread


def test_glow_with_a_constant_image_and_trainer_batch_of_one(tmp_path):
    glow = invflow.Glow(1, 4, levels=2, steps=1, hidden=4).double().train()
    out = glow(torch.full((2, 1, 4, 4), 0.1, dtype=torch.float64))
    assert torch.isfinite(out.log_prob).all()
    logs = [m.log_scale.abs().max().item() for m in glow.modules() if isinstance(m, invflow.ActNorm)]
    assert max(logs) < 5  # was 13.8 (scale 1e6) for the constant channels
    # a batch of one whose last scale is 1 x 1: refused with a clear message, not scale 1e6
    from invflow.train import Trainer

    model = invflow.Glow(1, 4, levels=2, steps=1, hidden=4).double()
    data = torch.randint(0, 256, (4, 1, 4, 4), dtype=torch.uint8)
    trainer = Trainer(model, data, out_dir=str(tmp_path / "r"), steps=1, batch_size=1, progress=False)
    with pytest.raises(ValueError, match="init_batch"):
        trainer.fit()
    trainer = Trainer(
        model, data, out_dir=str(tmp_path / "r2"), steps=1, batch_size=1, init_batch=4, progress=False
    )
    trainer.fit()
    assert all(bool(m.initialized) for m in model.modules() if isinstance(m, invflow.ActNorm))


# ----------------------------------------------------------- 4: ActNorm under DDP
def _ddp_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = invflow.VectorFlow(4, blocks=2, hidden=8).double()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    g = torch.Generator().manual_seed(5)
    data = torch.randn(8, 4, generator=g, dtype=torch.float64)
    data[4:] = 3 * data[4:] + 2  # the shards differ in distribution
    ddp.train()
    ddp(data[rank * 4 : (rank + 1) * 4])
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_actnorm_under_ddp_gives_identical_replicas_from_the_global_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k  # was 0.69 apart
    g = torch.Generator().manual_seed(5)
    data = torch.randn(8, 4, generator=g, dtype=torch.float64)
    data[4:] = 3 * data[4:] + 2
    # the first ActNorm sees the data itself: its init is that of the global batch
    torch.testing.assert_close(s0["flow.flows.0.flows.0.bias"], -data.mean(0))
    torch.testing.assert_close(
        s0["flow.flows.0.flows.0.log_scale"], -torch.log(data.std(0, unbiased=False) + 1e-6)
    )


# --------------------------------------------------------------- 5: numeric arguments
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, "1", True])
def test_sample_temperature_is_validated(bad):
    glow = invflow.Glow(1, 4, levels=1, steps=1, hidden=4).double()
    with pytest.raises((ValueError, TypeError), match="temperature"):
        glow.sample(2, temperature=bad)
    with pytest.raises((ValueError, TypeError), match="n must"):
        glow.sample(bad if bad is not True else 0)
    split = invflow.Glow(1, 4, levels=2, steps=1, hidden=4, split_prior=True).double()
    with pytest.raises((ValueError, TypeError), match="temperature"):
        split.sample(2, temperature=bad)


def test_check_number_names_the_argument_and_the_range():
    assert check_number(3, "k", "f", low=1, integer=True) == 3
    assert check_number(0.5, "fpr", "f", low=0, high=1, high_open=True) == 0.5
    with pytest.raises(ValueError, match=r"f: fpr must be a finite number >= 0 and < 1, got 1.0"):
        check_number(1.0, "fpr", "f", low=0, high=1, high_open=True)
    with pytest.raises(TypeError, match="k must be an integer >= 1"):
        check_number(2.5, "k", "f", low=1, integer=True)
    assert check_number(None, "clip", "f", low=0, optional=True) is None


# ------------------------------------------------------------------ 6: low precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lu", [True, False])
def test_low_precision_glow_runs_forward_inverse_and_sample(dtype, lu):
    torch.manual_seed(0)
    glow = invflow.Glow(1, 8, levels=2, steps=2, hidden=8, lu=lu)
    x = images(4, dtype=torch.float32)
    glow.train()(x)
    want = glow.eval()(x).log_prob
    low = glow.to(dtype)
    out = low(x.to(dtype))
    assert out.log_prob.dtype == torch.float32  # log-densities of low-precision inputs in float32
    tol = 0.05 if dtype == torch.float16 else 0.5
    assert (out.log_prob - want).abs().max() < tol * 64  # per-dimension error below tol nats
    back = low.inverse(out.latents)
    assert back.dtype == dtype and (back.float() - x).abs().max() < (0.01 if dtype == torch.float16 else 0.05)
    s = low.sample(3, temperature=0.7)
    assert s.dtype == dtype and s.shape == (3, 1, 8, 8) and torch.isfinite(s).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda: invflow.RealNVP(1, 4, levels=2, blocks=1, hidden=4),
        lambda: invflow.PatchGlow(1, 4, patch_size=2, steps=1, hidden=4),
        lambda: invflow.DenseGlow(1, 4, levels=2, steps=1, hidden=4),
        lambda: invflow.Glow(1, 4, levels=2, steps=1, hidden=4, split_prior=True),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_image_model_runs_in_low_precision_and_under_autocast(make, dtype):
    torch.manual_seed(0)
    model = make()
    x = images(4, size=4, dtype=torch.float32)
    model.train()(x)
    want = model.eval()(x).log_prob
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        auto = model(x)
        assert (model.inverse(auto.latents) - x).abs().max() < 0.05 and torch.isfinite(model.sample(2)).all()
    assert auto.log_prob.dtype == torch.float32 and (auto.log_prob - want).abs().max() < 0.5 * 16
    low = model.to(dtype)
    out = low(x.to(dtype))
    assert out.log_prob.dtype == torch.float32 and (out.log_prob - want).abs().max() < 0.02 * 16
    back = low.inverse(out.latents)
    assert back.dtype == dtype and (back.float() - x).abs().max() < 0.02
    assert torch.isfinite(low.sample(2).float()).all()
    low.train()
    (-low(x.to(dtype)).log_prob.mean()).backward()  # a low-precision training step's gradients
    assert all(torch.isfinite(p.grad.float()).all() for p in low.parameters() if p.grad is not None)


def test_invconv_low_precision_matrix_is_the_float32_one_rounded():
    conv = invflow.InvConv1x1(6, lu=False)
    w32, ld32 = conv.weight_and_logdet()
    half = conv.half()
    w, ld = half.weight_and_logdet()
    assert w.dtype == torch.float32 and ld.dtype == torch.float32
    torch.testing.assert_close(w, w32.half().float())
    x = torch.randn(2, 6, 3, 3).half()
    y, logdet = half(x)
    assert y.dtype == torch.float16 and logdet.dtype == torch.float32
    assert logdet[0].item() == pytest.approx(9 * ld.item(), abs=1e-3)
    back, _ = half.inverse(y)
    assert (back.float() - x.float()).abs().max() < 0.02


def test_autocast_bfloat16_glow_forward_inverse_sample():
    torch.manual_seed(0)
    glow = invflow.Glow(1, 8, levels=2, steps=2, hidden=8)
    x = images(4, dtype=torch.float32)
    glow.train()(x)
    glow.eval()
    want = glow(x).log_prob
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = glow(x)
        back = glow.inverse(out.latents)
        s = glow.sample(2)
    assert out.log_prob.dtype == torch.float32 and torch.isfinite(out.log_prob).all()
    assert (out.log_prob - want).abs().max() < 0.5 * 64
    assert (back.float() - x).abs().max() < 0.05
    assert torch.isfinite(s).all()


def test_vector_flow_half_precision():
    flow = invflow.VectorFlow(6, blocks=2, hidden=8)
    x = torch.randn(8, 6)
    flow.train()(x)
    flow.eval()
    want = flow(x).log_prob
    out = flow.half()(x.half())
    assert out.log_prob.dtype == torch.float32
    assert (out.log_prob - want).abs().max() < 0.1
    assert (flow.inverse(out.latents).float() - x).abs().max() < 0.05


# ----------------------------------------------------------------- 7: input range
@pytest.mark.parametrize(
    "make",
    [
        lambda: invflow.Glow(1, 8, levels=2, steps=1, hidden=4),
        lambda: invflow.RealNVP(1, 8, levels=2, blocks=1, hidden=4),
        lambda: invflow.PatchGlow(1, 8, patch_size=4, steps=1, hidden=4),
        lambda: invflow.DenseGlow(1, 4, levels=2, steps=1, hidden=4),
    ],
)
def test_image_models_refuse_floats_outside_the_preprocessed_range(make):
    model = make().double()
    size = model.input_shape[-1]
    k = torch.randint(0, 256, (2, 1, size, size), dtype=torch.uint8)
    for bad in (k.double(), k.double() / 255):  # 0..255 and torchvision's ToTensor 0..1
        with pytest.raises(ValueError, match=r"\[-0.5, 0.5\].*invflow.data.preprocess"):
            model(bad)
    edge = torch.full((2, 1, size, size), 0.5, dtype=torch.float64)
    edge[0] = -0.5  # the exact ends of preprocess's range are admitted
    model.train()(edge)
    model(invflow.data.preprocess(k, dtype=torch.float64))


def test_trainer_refuses_float_images_outside_the_range(tmp_path):
    from invflow.train import Trainer

    glow = invflow.Glow(1, 4, levels=1, steps=1, hidden=4)
    k = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)
    for bad in (k.float(), k.float() / 255):
        with pytest.raises(ValueError, match=r"\[-0.5, 0.5\].*invflow.data.preprocess"):
            Trainer(glow, bad, out_dir=str(tmp_path), steps=1, batch_size=4)
    Trainer(glow, invflow.data.preprocess(k), out_dir=str(tmp_path), steps=1, batch_size=4)  # in range
    Trainer(glow, k, out_dir=str(tmp_path), steps=1, batch_size=4)  # uint8: preprocessed by the trainer
    Trainer(
        invflow.VectorFlow(3, blocks=1, hidden=2),
        50 * torch.randn(8, 3),
        out_dir=str(tmp_path),
        steps=1,
        batch_size=4,
    )  # vectors: any finite values


def test_vector_flows_take_any_finite_values():
    flow = invflow.VectorFlow(4, blocks=1, hidden=4).double().train()
    assert torch.isfinite(flow(100 * torch.randn(5, 4, dtype=torch.float64)).log_prob).all()


# --------------------------------------------------------- 10: untrained models warn
def test_untrained_model_warns_in_eval_mode_and_not_once_initialised():
    glow = invflow.Glow(1, 4, levels=1, steps=1, hidden=4).double().eval()
    x = images(2, size=4)
    with pytest.warns(UninitializedWarning, match="never initialised"):
        glow.log_prob(x)
    glow.train()(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        glow.eval().log_prob(x)
    # loading an untrained state dict makes it warn again
    glow.load_state_dict(invflow.Glow(1, 4, levels=1, steps=1, hidden=4).double().state_dict())
    with pytest.warns(UninitializedWarning):
        glow.log_prob(x)


# ------------------------------------------- 5: a matrix of bad numbers per entry point
NON_FINITE = [float("nan"), float("inf"), float("-inf")]
NOT_NUMBERS = ["2", None, True, [1]]


def _bad_for(kind: str) -> list:
    """Bad values for an argument of ``kind``: 'pos_int' (>= 1), 'nonneg_int', 'pos' (> 0),
    'nonneg' (>= 0), 'real'."""
    bad = list(NOT_NUMBERS)
    if kind in ("pos_int", "nonneg_int"):
        bad += [2.5, -1, 1e3 + 0.5] + ([0] if kind == "pos_int" else [])
    else:
        bad += NON_FINITE + ({"pos": [0.0, -1.0], "nonneg": [-1e-3, -5.0], "real": []}[kind])
    return bad


def _trainer(tmp_path, **kw):
    from invflow.train import Trainer

    return Trainer(invflow.VectorFlow(2, blocks=1, hidden=2), torch.randn(4, 2), out_dir=str(tmp_path), **kw)


_TINY_GLOW = invflow.Glow(1, 4, levels=1, steps=1, hidden=2)

ENTRY_POINTS = {
    "Glow": (
        lambda **k: invflow.Glow(
            **{"in_channels": 1, "image_size": 4, "levels": 1, "steps": 1, "hidden": 2, **k}
        ),
        {
            "in_channels": "pos_int",
            "image_size": "pos_int",
            "levels": "pos_int",
            "steps": "pos_int",
            "hidden": "pos_int",
        },
    ),
    "RealNVP": (
        lambda **k: invflow.RealNVP(
            **{"in_channels": 1, "image_size": 4, "levels": 1, "blocks": 1, "hidden": 2, **k}
        ),
        {"levels": "pos_int", "blocks": "pos_int", "hidden": "pos_int", "clamp": "pos"},
    ),
    "PatchGlow": (
        lambda **k: invflow.PatchGlow(
            **{"in_channels": 1, "image_size": 4, "patch_size": 2, "steps": 1, "hidden": 2, **k}
        ),
        {"patch_size": "pos_int", "steps": "pos_int", "hidden": "pos_int"},
    ),
    "DenseGlow": (
        lambda **k: invflow.DenseGlow(
            **{"in_channels": 1, "image_size": 4, "levels": 1, "steps": 1, "hidden": 2, **k}
        ),
        {"steps": "pos_int", "hidden": "pos_int", "seed": "nonneg_int"},
    ),
    "VectorFlow": (
        lambda **k: invflow.VectorFlow(**{"dim": 2, "blocks": 1, "hidden": 2, **k}),
        {"blocks": "pos_int", "hidden": "pos_int", "clamp": "pos", "seed": "nonneg_int"},
    ),
    "ActNorm": (
        lambda **k: invflow.ActNorm(**{"num_channels": 2, **k}),
        {"num_channels": "pos_int", "eps": "nonneg"},
    ),
    "InvConv1x1": (lambda **k: invflow.InvConv1x1(**{"num_channels": 2, **k}), {"num_channels": "pos_int"}),
    "FixedLinear": (
        lambda **k: invflow.FixedLinear(**{"num_channels": 2, **k}),
        {"num_channels": "pos_int", "seed": "nonneg_int"},
    ),
    "nets.GlowNet": (
        lambda **k: nets.GlowNet(**{"in_channels": 2, "out_channels": 2, "hidden": 2, **k}),
        {"hidden": "pos_int"},
    ),
    "nets.MLP": (
        lambda **k: nets.MLP(**{"in_features": 2, "out_features": 2, "hidden": 2, **k}),
        {"hidden": "pos_int", "layers": "nonneg_int"},
    ),
    "Glow.sample": (
        lambda **k: _TINY_GLOW.sample(**{"n": 1, **k}),
        {"n": "pos_int", "temperature": "nonneg"},
    ),
    "priors.ClassConditionalGaussianMixture.sample": (
        lambda **k: invflow.priors.ClassConditionalGaussianMixture(2, 3).sample(**{"n": 2, **k}),
        {"temperature": "nonneg"},
    ),
    "invflow.train.finite_mean": (
        lambda **k: invflow.train.finite_mean(torch.zeros(3), **k),
        {"max_dropped": "nonneg"},
    ),
}

TRAINER_FIELDS = {
    "steps": "pos_int",
    "batch_size": "pos_int",
    "lr": "pos",
    "weight_decay": "nonneg",
    "warmup": "nonneg_int",
    "decay_start": "nonneg_int",
    "decay_steps": "pos_int",
    "grad_clip": "pos",
    "checkpoint_every": "pos_int",
    "keep_checkpoints": "pos_int",
    "log_every": "pos_int",
    "translate": "nonneg_int",
    "init_batch": "pos_int",
}
OPTIONAL = {
    ("Trainer", "grad_clip"),
    ("Trainer", "init_batch"),
    ("Trainer", "decay_start"),
    ("Trainer", "decay_steps"),
}


def _cases(entry):
    if entry == "Trainer":
        return [
            (arg, bad)
            for arg, kind in TRAINER_FIELDS.items()
            for bad in _bad_for(kind)
            if not (("Trainer", arg) in OPTIONAL and bad is None)
        ]
    return [(arg, bad) for arg, kind in ENTRY_POINTS[entry][1].items() for bad in _bad_for(kind)]


@pytest.mark.parametrize("entry", [*ENTRY_POINTS, "Trainer"])
def test_every_bad_number_is_refused_with_the_argument_named(entry, tmp_path):
    """Bad inputs tried per entry point: len(_cases(entry)) (337 in all)."""
    accepted, unnamed = [], []
    for arg, bad in _cases(entry):
        try:
            if entry == "Trainer":
                _trainer(tmp_path, **{arg: bad})
            else:
                ENTRY_POINTS[entry][0](**{arg: bad})
        except (ValueError, TypeError) as err:
            if arg not in str(err):
                unnamed.append((arg, bad, str(err)))
        else:
            accepted.append((arg, bad))
    assert not accepted, f"{entry} accepted {accepted}"
    assert not unnamed, f"{entry} did not name the argument: {unnamed}"
