"""Backend switch between the fused C++/CUDA kernels and the pure-PyTorch reference.

``with invflow.backend("reference"): ...`` and ``with invflow.backend("fused"): ...`` switch
every layer inside the block.  The default is "fused" when the extension ``invflow._C`` is
built and "reference" otherwise (with one warning).  Asking for "fused" explicitly when the
extension is missing raises RuntimeError: an explicit request is never served silently by
the reference.

CUDA tensors: until the CUDA kernels have passed ``make gpu-check`` on hardware
(``CUDA_KERNELS_VERIFIED``, flipped in the commit that records such a run in
docs/benchmarks.md), the default for CUDA tensors is the reference, with one warning naming the
opt-in ``invflow.backend("fused")``.  An explicit choice always wins.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

import torch

BACKENDS = ("fused", "reference")

# A per-thread stack of explicit choices.  threading.local (unlike a ContextVar) is
# traceable by torch.compile, so compiled code honours the backend without graph breaks.
_state = threading.local()
_warned = False
_warned_cuda = False

# True once `make gpu-check` has passed on a GPU (see docs/benchmarks.md, "GPU verification").
CUDA_KERNELS_VERIFIED = False


def fused_available() -> bool:
    """Whether the compiled extension ``invflow._C`` is importable (its ops are registered)."""
    from .ops import fused

    return fused.AVAILABLE


def current_backend() -> str:
    """Name of the backend the layers use right now on CPU tensors ("fused" or "reference");
    ``backend_for(x)`` gives the one for a particular tensor (CUDA may differ, see above)."""
    global _warned
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    if fused_available():
        return "fused"
    if not _warned:
        _warned = True
        from .ops import fused

        warnings.warn(
            "invflow: the compiled extension invflow._C is not available "
            f"({fused.IMPORT_ERROR}); using the pure-PyTorch reference backend. "
            "Build it with `pip install -e . --no-build-isolation`.",
            RuntimeWarning,
            stacklevel=3,
        )
    return "reference"


def default_backend(device: torch.device) -> str:
    """The backend used for tensors on ``device`` when no ``invflow.backend`` block is active."""
    global _warned_cuda
    name = current_backend()
    if name == "fused" and device.type == "cuda" and not CUDA_KERNELS_VERIFIED:
        if not _warned_cuda:
            _warned_cuda = True
            warnings.warn(
                "invflow: the CUDA kernels have not yet passed `make gpu-check` on a GPU, so CUDA "
                "tensors use the pure-PyTorch reference backend by default; opt in to the fused "
                'kernels with `with invflow.backend("fused"): ...`.',
                RuntimeWarning,
                stacklevel=4,
            )
        return "reference"
    return name


def backend_for(x: torch.Tensor) -> str:
    """The backend serving an op on ``x``: the innermost ``invflow.backend`` block, else
    ``default_backend(x.device)``."""
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    return default_backend(x.device)


@contextlib.contextmanager
def backend(name: str) -> Iterator[str]:
    """Context manager selecting the kernel backend for every invflow layer inside it."""
    if name not in BACKENDS:
        raise ValueError(f"invflow.backend: expected one of {BACKENDS}, got {name!r}")
    if name == "fused" and not fused_available():
        from .ops import fused

        raise RuntimeError(
            "invflow.backend('fused') was requested but the extension invflow._C is not built "
            f"({fused.IMPORT_ERROR}); run `pip install -e . --no-build-isolation`"
        )
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield name
    finally:
        stack.pop()
