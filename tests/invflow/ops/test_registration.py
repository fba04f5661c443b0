"""The one registration convention of the fused ops (docs/kernels.md): every schema in
csrc/registration.cpp, every CPU kernel registered in csrc/cpu/register.cpp and every CUDA
kernel in csrc/cuda/register.cu, every kernel declared in csrc/ops.h, and a fake kernel and
autograd for every op registered from invflow/ops/fused.py (or a reason in
``fused.NO_AUTOGRAD``)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

from invflow.ops import fused

CSRC = Path(__file__).resolve().parents[3] / "csrc"
SOURCES = sorted(p for p in CSRC.rglob("*") if p.suffix in (".cpp", ".cu", ".h", ".cuh"))


def _text(path: Path) -> str:
    """The file without its // comments (so prose naming a macro is no registration)."""
    return re.sub(r"//[^\n]*", "", path.read_text())


def _schemas(text: str) -> list[str]:
    """Op names of the ``m.def("name(...) ...")`` calls (a schema may span string pieces)."""
    names = []
    for block in re.findall(r"m\.def\(\s*((?:\"[^\"]*\"\s*)+)\)", text):
        names += re.findall(r'^\s*"\s*([a-z_0-9]+)\(', block)
    return names


def _impls(text: str, key: str, namespace: str) -> list[str]:
    """Op names of ``m.impl("name", &invflow::<namespace>::name)`` inside the file's
    TORCH_LIBRARY_IMPL(invflow, <key>, m) block; fails when a kernel of another name or
    namespace is registered under an op."""
    blocks = re.findall(
        r"TORCH_LIBRARY_IMPL\(\s*invflow\s*,\s*" + key + r"\s*,\s*m\s*\)\s*\{(.*?)\n\}", text, re.S
    )
    assert len(blocks) == 1, f"one TORCH_LIBRARY_IMPL(invflow, {key}, m) block expected"
    pairs = re.findall(r'm\.impl\(\s*"([a-z_0-9]+)"\s*,\s*&invflow::(\w+)::(\w+)\s*\)', blocks[0])
    for op, ns, fn in pairs:
        assert (ns, fn) == (namespace, op), f"{op} registered as invflow::{ns}::{fn}"
    return [op for op, _, _ in pairs]


OPS = _schemas(_text(CSRC / "registration.cpp"))


def test_every_schema_is_defined_in_registration_cpp():
    assert len(OPS) == len(set(OPS)) and len(OPS) >= 11, OPS
    text = _text(CSRC / "registration.cpp")
    assert len(re.findall(r"TORCH_LIBRARY\(\s*invflow\s*,", text)) == 1
    assert "TORCH_LIBRARY_IMPL" not in text and "m.impl" not in text, "registration.cpp holds schemas only"
    for path in SOURCES:
        if path.name == "registration.cpp":
            continue
        text = _text(path)
        assert not re.search(r"TORCH_LIBRARY(_FRAGMENT)?\(", text), (
            f"{path}: schemas belong in registration.cpp"
        )
        assert not _schemas(text), f"{path}: schemas belong in registration.cpp"


@pytest.mark.parametrize(
    "register, key, namespace", [("cpu/register.cpp", "CPU", "cpu"), ("cuda/register.cu", "CUDA", "cuda")]
)
def test_every_op_has_one_kernel_per_backend_registered_in_one_file(register, key, namespace):
    impls = _impls(_text(CSRC / register), key, namespace)
    assert sorted(impls) == sorted(OPS), f"{register}: ops without a {key} kernel or unknown ops"
    for path in SOURCES:
        if path.relative_to(CSRC).as_posix() in ("cpu/register.cpp", "cuda/register.cu"):
            continue
        assert "TORCH_LIBRARY_IMPL" not in _text(path), f"{path}: kernels register in {register}"


def test_ops_h_declares_every_kernel_for_both_backends():
    text = _text(CSRC / "ops.h")
    for op in OPS:
        assert re.search(r"\b" + op + r"\(", text), f"ops.h declares no kernel {op}"
    for namespace in ("cpu", "cuda"):
        body = re.search(r"namespace " + namespace + r" \{(.*?)\}", text, re.S)
        assert body and "INVFLOW_DECLARE_KERNELS" in body.group(1), (
            f"namespace {namespace} declares no kernels"
        )


def test_every_op_has_a_cpu_and_a_cuda_source_file():
    for op in OPS:
        stem = re.sub(r"_(forward|inverse|backward|double_backward)$", "", op)
        stem = re.sub(r"_(forward|inverse|backward|double_backward)$", "", stem)
        assert (CSRC / "cpu" / f"{stem}.cpp").exists(), op
        assert (CSRC / "cuda" / f"{stem}.cu").exists(), op


def test_no_autograd_names_only_ops_with_a_reason():
    assert set(fused.NO_AUTOGRAD) <= set(OPS)
    assert all(isinstance(r, str) and r for r in fused.NO_AUTOGRAD.values())


@pytest.mark.skipif(not fused.AVAILABLE, reason="invflow._C is not built")
def test_the_loaded_library_has_exactly_the_schemas_of_registration_cpp():
    loaded = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("invflow::")}
    assert loaded == set(OPS)


@pytest.mark.skipif(not fused.AVAILABLE, reason="invflow._C is not built")
@pytest.mark.parametrize("op", OPS)
def test_fused_py_registers_a_fake_kernel_and_autograd(op):
    qualified = f"invflow::{op}"
    entry = torch._library.simple_registry.singleton.find(qualified)
    assert entry.fake_impl.kernel is not None, f"no fake kernel for {op} (fused.py)"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CPU")
    has_autograd = torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "Autograd")
    assert has_autograd != (op in fused.NO_AUTOGRAD), (
        f"{op}: autograd registered from fused.py, or a reason in fused.NO_AUTOGRAD"
    )


def test_channels_last_module_is_a_deprecated_reexport():
    import importlib
    import sys

    sys.modules.pop("invflow.ops.channels_last", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module("invflow.ops.channels_last")
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert module.coupling_cl_forward is fused.coupling_cl_forward


def test_scale_terms_is_public_in_invflow_ops():
    from invflow import ops
    from invflow.ops import reference

    assert ops.scale_terms is reference.scale_terms
