"""Deprecated: the channels-last coupling lives in ``invflow.ops.fused`` (its registration)
and ``invflow.ops.coupling_cl`` (the dispatching function).  This module re-exports
``coupling_cl_forward`` for one release."""

from __future__ import annotations

import warnings

from .fused import coupling_cl_forward  # noqa: F401

warnings.warn(
    "invflow.ops.channels_last is deprecated; use invflow.ops.coupling_cl or invflow.ops.fused.coupling_cl_forward",
    DeprecationWarning,
    stacklevel=2,
)
