"""Saving what a user composes: ``invflow.save(invflow.Sequential(...))`` of built-in layers,
nested stacks, masks, st-nets given as modules (invflow's and torch.nn's) and user layers
registered with ``@invflow.checkpoint.register``; the one-line refusals of what a checkpoint
cannot record; and the hostile-file guarantees for such configs (no unpickling, trusted
modules only, config checked against the stored tensor shapes and kinds before loading)."""

from __future__ import annotations

import inspect
import json

import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

import invflow
from invflow import checkpoint, masks, nets

D = 4


@pytest.fixture
def isolated_registry(monkeypatch):
    monkeypatch.setattr(checkpoint, "_REGISTRY", dict(checkpoint._REGISTRY))


def _perturbed(flow: nn.Module, x: torch.Tensor, context=None) -> nn.Module:
    """``flow`` after ActNorm's initialisation and a random perturbation of every parameter (the
    zero-initialised st-net outputs would hide a weight that was not restored), in eval mode."""
    torch.manual_seed(1)
    flow.train()
    flow(x) if context is None else flow(x, context=context)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return flow.eval()


def _round_trip(flow: nn.Module, tmp_path, name="flow.safetensors") -> nn.Module:
    path = tmp_path / name
    invflow.save(flow, path)
    return invflow.load(path)


def _assert_same_flow(a, b, x, context=None):
    kw = {} if context is None else {"context": context}
    ya, la = a(x, **kw)
    yb, lb = b(x, **kw)
    assert torch.equal(ya, yb) and torch.equal(la, lb)
    xa, _ = b.inverse(yb, **kw)
    torch.testing.assert_close(xa, x)


def _vector_stack():
    torch.manual_seed(0)
    return invflow.Sequential(
        invflow.ActNorm(D),
        invflow.InvConv1x1(D),
        invflow.InvConv1x1(D, lu=False),
        invflow.FixedLinear(D, seed=3),
        invflow.AffineCoupling(D, masks.Channel(1), net=nets.MLP(2, 4, hidden=8), scale="exp"),
        invflow.Sequential(  # nested
            invflow.AdditiveCoupling(D, masks.Channel(0), net=nets.MLP(2, 2, hidden=8, layers=1)),
            invflow.AffineCoupling(
                D,
                masks.Channel(0),
                net=nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 4)),
                scale="tanh",
                clamp=1.5,
            ),
        ),
    ).double()


def test_a_sequential_of_builtin_vector_layers_round_trips(tmp_path):
    x = torch.randn(6, D, dtype=torch.float64)
    flow = _perturbed(_vector_stack(), x)
    back = _round_trip(flow, tmp_path)
    assert type(back) is invflow.Sequential and type(back[5]) is invflow.Sequential
    assert not back.training and back[0].initialized
    _assert_same_flow(flow, back, x)
    fresh = _vector_stack()
    assert not torch.allclose(fresh.eval()(x)[0], flow(x)[0])  # the weights matter


def test_an_image_stack_with_every_mask_and_conv_net_round_trips(tmp_path):
    torch.manual_seed(0)
    c = 4  # after the squeeze
    flow = invflow.Sequential(
        invflow.Squeeze(),
        invflow.ActNorm(c),
        invflow.InvConv1x1(c),
        invflow.AffineCoupling(c, masks.Checkerboard(1), hidden=8),
        invflow.AffineCoupling(c, masks.Horizontal(0), net=nets.ResNet(c, 2 * c, hidden=8, blocks=1)),
        invflow.AffineCoupling(c, masks.Cycle(2), net=nn.Conv2d(c, 2 * c, 3, padding=1)),
        invflow.AdditiveCoupling(c, masks.Channel(1), net=nets.GlowNet(2, 2, 8)),
    ).double()
    x = 0.2 * torch.randn(3, 1, 8, 8, dtype=torch.float64)
    flow = _perturbed(flow, x)
    back = _round_trip(flow, tmp_path)
    assert [type(f) for f in back] == [type(f) for f in flow]
    assert repr(back[5].mask) == "Cycle(2)" and back[4].mask.parity == 0
    _assert_same_flow(flow, back, x)


def test_a_conditional_stack_round_trips(tmp_path):
    torch.manual_seed(0)
    k = 3
    flow = invflow.Sequential(
        invflow.ActNorm(D),
        invflow.AffineCoupling(
            D, masks.Channel(0), net=nets.MLP(2, 4, hidden=8, context_features=k), context_channels=k
        ),
        invflow.AffineCoupling(D, masks.Channel(1), net=nn.Linear(2 + k, 4), context_channels=k),
    ).double()
    x, c = torch.randn(5, D, dtype=torch.float64), torch.randn(5, k, dtype=torch.float64)
    flow = _perturbed(flow, x, c)
    back = _round_trip(flow, tmp_path)
    assert back[1].context_channels == k
    _assert_same_flow(flow, back, x, c)


def test_every_public_layer_net_mask_and_prior_class_is_registered():
    for module, base in (
        (invflow.layers, nn.Module),
        (nets, nn.Module),
        (masks, masks.Mask),
        (invflow.priors, nn.Module),
    ):
        for name in getattr(module, "__all__", None) or dir(module):
            obj = getattr(module, name)
            if (
                inspect.isclass(obj)
                and issubclass(obj, base)
                and obj.__module__.startswith("invflow.")
                and not inspect.isabstract(obj)
                and not name.startswith("_")
            ):
                assert checkpoint._REGISTRY.get(obj.__name__) is obj, name


# ------------------------------------------------------------------ user layers
def test_a_user_layer_registered_by_decorator_round_trips(tmp_path, isolated_registry):
    @checkpoint.register
    class Shift(invflow.Flow):
        """y = x + shift * direction, with a tensor argument (a vector mask) and a tuple."""

        def __init__(self, features, direction, sizes=(2, 3), *, scale=1.0):
            super().__init__()
            self.direction, self.sizes, self.scale = direction, sizes, scale
            self.shift = nn.Parameter(torch.zeros(features))

        def forward(self, x, context=None):
            return x + self.scale * self.shift * self.direction, x.new_zeros(x.shape[0])

        def inverse(self, y, context=None):
            return y - self.scale * self.shift * self.direction, y.new_zeros(y.shape[0])

    direction = torch.tensor([True, False, True, False])
    flow = invflow.Sequential(Shift(D, direction, scale=2.0), invflow.ActNorm(D)).double()
    x = torch.randn(5, D, dtype=torch.float64)
    flow = _perturbed(flow, x)
    back = _round_trip(flow, tmp_path)
    assert torch.equal(back[0].direction, direction) and back[0].sizes == (2, 3) and back[0].scale == 2.0
    _assert_same_flow(flow, back, x)


def test_register_under_another_name(tmp_path, isolated_registry):
    with pytest.raises(ValueError, match=r"already registered.*register\(name='MyMLP'\)"):

        @checkpoint.register
        class MLP(nn.Module):  # the name of invflow.nets.MLP
            pass

    @checkpoint.register(name="MyMLP")
    class MLP(nn.Module):  # noqa: F811
        def __init__(self, n):
            super().__init__()
            self.lin = nn.Linear(n, 2 * n)

        def forward(self, h):
            return self.lin(h)

    flow = invflow.AffineCoupling(D, masks.Channel(0), net=MLP(2)).double()
    x = torch.randn(3, D, dtype=torch.float64)
    back = _round_trip(_perturbed(flow, x), tmp_path)
    assert type(back.net) is MLP
    _assert_same_flow(flow, back, x)


# ------------------------------------------------------------------ refusals
def test_what_a_checkpoint_cannot_record_is_refused_in_one_line(tmp_path, isolated_registry):
    class Unregistered(nn.Module):
        def forward(self, h):
            return torch.cat([h, h], 1)

    net = nets.MLP(2, 4, hidden=8)
    cases = [
        (invflow.AffineCoupling(D, masks.Channel(0), net=lambda i, o: nets.MLP(i, o, hidden=8)), "code that"),
        (
            invflow.AffineCoupling(D, masks.Channel(0), net=Unregistered()),
            "not registered.*@invflow.checkpoint.register",
        ),
        (
            invflow.Sequential(
                invflow.AffineCoupling(D, masks.Channel(0), net=net),
                invflow.AffineCoupling(D, masks.Channel(1), net=net),
            ),
            "tied weights",
        ),
        (
            invflow.AffineCoupling(D, masks.Channel(0), net=nn.Sequential(nn.Linear(2, 4), nn.Hardswish())),
            "Hardswish.*not registered",
        ),
    ]
    for flow, message in cases:
        with pytest.raises(TypeError, match=message) as err:
            invflow.save(flow, tmp_path / "f.safetensors")
        assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())

    class Late(nn.Module):
        def __init__(self, n=2):
            super().__init__()

    early = Late()
    checkpoint.register(Late)
    with pytest.raises(TypeError, match="built before its class was registered"):
        invflow.save(early, tmp_path / "f.safetensors")
    invflow.save(Late(), tmp_path / "f.safetensors")  # built after: fine


def test_integer_weights_are_refused_not_cast(tmp_path):
    flow = _vector_stack()
    path = tmp_path / "f.safetensors"
    invflow.save(flow, path)
    data = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    data["flows.0.log_scale"] = torch.ones(D, dtype=torch.int64)
    safetensors.torch.save_file(data, str(path), metadata=meta)
    with pytest.raises(
        ValueError, match=r"'flows.0.log_scale' is stored as torch.int64 but the model holds floating"
    ):
        invflow.load(path)


# ------------------------------------------------------------------ hostile configs
def _rewrite_config(path, edit):
    data = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    meta["config"] = json.dumps(edit(json.loads(meta["config"])))
    safetensors.torch.save_file(data, str(path), metadata=meta)


def _coupling(config):
    """The config of the first AffineCoupling of ``_vector_stack`` (index 4)."""
    return config["flows"]["__invflow_tuple__"][4]


def test_an_edited_nested_config_is_refused_before_allocating(tmp_path):
    path = tmp_path / "f.safetensors"
    invflow.save(_vector_stack(), path)

    def huge(config):
        _coupling(config)["config"]["net"]["config"]["hidden"] = 4000
        return config

    _rewrite_config(path, huge)
    with pytest.raises(ValueError, match="does not match the stored tensors"):
        invflow.load(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: {"__invflow_class__": "os.system", "config": {}},
            "takes no argument|not registered|does not build",
        ),
        (
            lambda c: dict(
                c, flows={"__invflow_tuple__": [{"__invflow_class__": "NoSuchLayer", "module": "os"}]}
            ),
            "NoSuchLayer.*not registered",
        ),
        (
            lambda c: dict(
                c, flows={"__invflow_tuple__": [{"__invflow_class__": "torch.nn.Bilinear", "config": {}}]}
            ),
            "not one of the torch.nn",
        ),
        (
            lambda c: dict(
                c, flows={"__invflow_tuple__": [{"__invflow_class__": "Channel", "config": {"parity": 0}}]}
            ),
            "not an invflow.Flow",
        ),
        (
            lambda c: dict(
                c, flows={"__invflow_tensor__": {"dtype": "float32", "shape": [10**9], "values": []}}
            ),
            "tensor in the config is malformed",
        ),
        (lambda c: dict(c, extra=1), "takes no argument"),
    ],
)
def test_malformed_nested_configs_are_value_errors(tmp_path, edit, message):
    path = tmp_path / "f.safetensors"
    invflow.save(_vector_stack(), path)
    _rewrite_config(path, edit)
    with pytest.raises(ValueError, match=message):
        invflow.load(path)


def test_nested_modules_outside_the_trusted_packages_are_never_imported(tmp_path, monkeypatch):
    path = tmp_path / "f.safetensors"
    invflow.save(_vector_stack(), path)
    imported = []
    monkeypatch.setattr(checkpoint.importlib, "import_module", lambda name: imported.append(name))

    def foreign(config):
        _coupling(config)["config"]["net"] = {
            "__invflow_class__": "Evil",
            "module": "evil_module",
            "config": {},
        }
        return config

    _rewrite_config(path, foreign)
    with pytest.raises(ValueError, match="'Evil' in the config is not registered"):
        invflow.load(path)
    assert imported == []


def test_too_deep_or_too_many_nested_objects_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "f.safetensors"
    invflow.save(_vector_stack(), path)
    deep: object = 0
    for _ in range(checkpoint.MAX_DEPTH + 2):
        deep = [deep]
    _rewrite_config(path, lambda c: dict(c, flows=deep))
    with pytest.raises(ValueError, match="nested deeper"):
        invflow.load(path)
    monkeypatch.setattr(checkpoint, "MAX_NESTED", 3)
    invflow.save(_vector_stack(), path)
    with pytest.raises(ValueError, match="nests more than 3 objects"):
        invflow.load(path)
