"""Argument and input validation shared by invflow and the packages built on it (public).

Every public entry point validates its arguments with these helpers, so errors read alike:
TypeError for the wrong kind of value, ValueError for a wrong shape or value, both naming the
entry point, the argument and what was expected (docs/design.md, "Errors").

    check_number(value, name, where, low=, high=, integer=)   numeric arguments
    check_ints(where, **values)                                positive integer arguments
    check_limits(where, **values)                              size bounds (MAX_HIDDEN, ...)
    check_bools(where, **values)                               True / False flags
    check_input(x, layer, channels)                            layer inputs
    check_model_input(x, name, input_shape, param, images=)    model inputs
    unpreprocessed_hint(x) / check_preprocessed(x, where)       images not run through preprocess
    as_size(image_size)                                        int or (H, W) -> (H, W)
    check_generator(generator, device, where)                  None or a Generator on device
    check_float_dtype(dtype, name, where)                      a floating torch.dtype
    logdet_dtype(dtype)                                        float32 for half / bfloat16
    assert_values(ok, message)                                 a value check torch.compile keeps
"""

from __future__ import annotations

import math
import numbers

import torch

#: The range of preprocessed images (invflow.data.preprocess: (k + u) / 256 - 0.5 with
#: k in 0..255 and u in [0, 1) lies in [-0.5, 0.5], float rounding included).  It is the range
#: of the DATA, not of a model's domain: a flow's density is defined on all of R^D, and its own
#: samples leave this cube (see ``unpreprocessed_hint`` for what image models refuse).
IMAGE_RANGE = 0.5

#: Upper bounds on model sizes, checked by the model constructors and the st-nets, so that a
#: typo or an edited config (``hidden`` 64 -> 200000, ``--levels 10``) fails at once with a
#: one-line error instead of asking for 100+ GB.  Each is several times the largest size the
#: papers use (hidden 512, 3 levels of 32 steps on 32 x 32 images; Schirrmeister et al. 2020,
#: S1.1).  For a model that really is larger, raise the bound first, e.g.
#: ``invflow.validation.MAX_HIDDEN = 8192``.
MAX_HIDDEN = 4096  # st-net width (hidden channels / units), bottleneck dimension
MAX_LEVELS = 8  # scales of a multi-scale model
MAX_STEPS = 256  # flow steps (or blocks) per scale
MAX_BLOCKS = 64  # residual blocks of an st-net
MAX_CHANNELS = 64  # input channels of an image model
MAX_IMAGE_SIZE = 1024  # image height / width, patch size
MAX_DIM = 8192  # input dimensions of a fully-connected flow (VectorFlow dim, DenseGlow C*H*W)

_LIMIT_OF = {
    "hidden": "MAX_HIDDEN",
    "latent_dim": "MAX_HIDDEN",
    "bottleneck_dim": "MAX_HIDDEN",
    "levels": "MAX_LEVELS",
    "steps": "MAX_STEPS",
    "blocks": "MAX_BLOCKS",
    "in_channels": "MAX_CHANNELS",
    "image_size": "MAX_IMAGE_SIZE",
    "patch_size": "MAX_IMAGE_SIZE",
    "dim": "MAX_DIM",
}


def check_limits(where: str, **values) -> None:
    """ValueError when a size argument exceeds its bound (``hidden`` -> MAX_HIDDEN, ``levels``
    -> MAX_LEVELS, ``steps`` -> MAX_STEPS, ``blocks`` -> MAX_BLOCKS, ``in_channels`` ->
    MAX_CHANNELS, ``image_size`` / ``patch_size`` -> MAX_IMAGE_SIZE, ``dim`` -> MAX_DIM; the
    bounds are read when called, so raising one takes effect at once).  The message names the
    bound and how to raise it.  Validate types first (``check_ints``)."""
    for name, value in values.items():
        const = _LIMIT_OF[name]
        limit = globals()[const]
        if value > limit:
            raise ValueError(
                f"{where}: {name}={value} is above invflow.validation.{const} = {limit}, a bound against "
                f"sizes that would allocate far more memory than meant; if you really want a model "
                f"this large, set invflow.validation.{const} = {value} first"
            )


#: dtypes whose log-determinants (and small linear algebra) are computed in float32
LOW_PRECISION = (torch.float16, torch.bfloat16)


def logdet_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of log-determinants for inputs of ``dtype``: float32 for float16 / bfloat16
    (docs/design.md: a sum of N * C log-scales loses all precision in half), else ``dtype``."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def check_input(x, layer: str, channels: int | None = None, ranks: tuple[int, ...] = (2, 3, 4)) -> None:
    """Validates a layer input: a floating tensor of an allowed rank with ``channels`` channels.

    Raises TypeError for non-tensors and non-floating dtypes, ValueError for shapes, with a
    message that says what was expected.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{layer}: expected a floating tensor, got dtype {x.dtype} "
            "(convert images with invflow.data preprocessing first)"
        )
    if x.dim() not in ranks:
        shapes = " or ".join({2: "[B, C]", 3: "[B, C, L]", 4: "[B, C, H, W]"}[r] for r in ranks)
        raise ValueError(f"{layer}: expected input of shape {shapes}, got {list(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{layer}: expected {channels} channels (input of shape [B, {channels}, ...]), "
            f"got {list(x.shape)}"
        )


def check_number(
    value,
    name: str,
    where: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    optional: bool = False,
):
    """Validates a public numeric argument and returns it (as int or float).

    ``value`` must be a real number (Python, numpy, or a one-element tensor; not a bool), finite,
    an integer when ``integer``, and within ``low`` / ``high`` (inclusive unless ``low_open`` /
    ``high_open``); ``None`` passes when ``optional``.  Raises TypeError for a non-number and
    ValueError otherwise, both as "``where``: ``name`` must be <what>, got <value>".
    """
    if optional and value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
        value = value.item()
    kind = "an integer" if integer else "a finite number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    what = kind + (" " + " and ".join(bounds) if bounds else "") + (" (or None)" if optional else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be {what}, got {value!r} ({type(value).__name__})")
    if integer and not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be {what}, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{where}: {name} must be {what}, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(f"{where}: {name} must be {what}, got {value!r}")
    return int(value) if integer else float(value)


def check_generator(generator, device, where: str) -> None:
    """``generator`` must be None or a ``torch.Generator`` on the device type of ``device``
    (TypeError / ValueError naming ``where`` and how to make one), so that torch's own
    "Expected a 'cuda' device type for generator" never reaches a user."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{where}: generator must be a torch.Generator or None, got {type(generator).__name__} "
            f"(e.g. torch.Generator().manual_seed(0))"
        )
    device = torch.device(device)
    if generator.device.type != device.type:
        raise ValueError(
            f"{where}: generator is on {generator.device.type} but the values are drawn on {device.type}; "
            f"use torch.Generator(device={device.type!r})"
        )


def check_float_dtype(dtype, name: str, where: str) -> torch.dtype:
    """``dtype`` when it is a floating torch.dtype (float16 / bfloat16 / float32 / float64),
    else TypeError naming ``where``."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"{where}: {name} must be a floating torch.dtype such as torch.float32, got {dtype!r}"
        )
    return dtype


def as_size(image_size, where: str = "model") -> tuple[int, int]:
    """image_size (an int or (H, W)) -> (H, W), each an integer >= 1 (ValueError / TypeError)."""
    if isinstance(image_size, torch.Size) or isinstance(image_size, (list, tuple)):
        if len(image_size) != 2:
            raise ValueError(f"{where}: image_size must be an int or (H, W), got {image_size!r}")
        h, w = image_size
    else:
        h = w = image_size
    return (
        check_number(h, "image_size", where, low=1, integer=True),
        check_number(w, "image_size", where, low=1, integer=True),
    )


def check_bools(where: str, **values) -> None:
    """Every keyword argument must be True or False (TypeError naming it): a flag given as
    "no" or 0.5 would otherwise count as True."""
    for name, v in values.items():
        if not isinstance(v, bool):
            raise TypeError(f"{where}: {name} must be True or False, got {v!r} ({type(v).__name__})")


def check_ints(where: str, low: int = 1, **values) -> None:
    """Every keyword argument must be an integer >= ``low`` (TypeError / ValueError naming it)."""
    for name, v in values.items():
        check_number(v, name, where, low=low, integer=True)


def unpreprocessed_hint(x: torch.Tensor) -> str | None:
    """Whether floating images ``x`` look like images that were never preprocessed, and which
    kind; None when they do not.  This is the one rule every image model applies:

    * the batch has **no negative value** and its **maximum exceeds IMAGE_RANGE (0.5)**.

    Preprocessed 8-bit images (``invflow.data.preprocess``) lie in [-0.5, 0.5), so such a batch
    is not preprocessed data, and it is exactly what raw pixel values give: maximum > 1 reads as
    0..255 values, maximum <= 1 as torchvision's ``ToTensor`` 0..1 floats (both returned as a
    hint naming the kind and the fix).  Everything else is accepted, because a flow's density is
    defined on all of R^D: a model's own samples at any temperature leave [-0.5, 0.5] on both
    sides (dark pixels below -0.5), and values such as 2.0 or -3.0 are valid inputs with a low
    density.  The one blind spot: a batch of only bright samples (every value >= 0) reaching
    above 0.5 is taken for raw pixels; score such samples together with others, or clamp them
    into [-0.5, 0.5].  NaN / Inf are not judged here (``check_model_input`` refuses them).
    Reads x once (one host sync on CUDA)."""
    lo, hi = torch.aminmax(x.detach())
    lo, hi = float(lo), float(hi)
    if not (lo >= 0 and hi > IMAGE_RANGE and math.isfinite(hi)):
        return None
    if hi > 1:
        kind = "0..255 pixel values"
        fix = "preprocess the uint8 images with invflow.data.preprocess (x.round().to(torch.uint8) first)"
    else:
        kind = "torchvision's ToTensor 0..1 floats"
        fix = (
            "preprocess the 8-bit images with invflow.data.preprocess "
            "((x * 255).round().to(torch.uint8) first)"
        )
    return (
        f"values outside [-{IMAGE_RANGE:g}, {IMAGE_RANGE:g}] (min {lo:.4g}, max {hi:.4g}, none negative) "
        f"look like {kind}, not preprocessed images; {fix}"
    )


def check_preprocessed(x: torch.Tensor, where: str) -> None:
    """ValueError "``where``: <unpreprocessed_hint(x)>" when floating images ``x`` look like raw
    pixel values (see ``unpreprocessed_hint`` for the rule); integer tensors and any other
    floating values pass (check dtypes and NaN / Inf separately)."""
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel():
        hint = unpreprocessed_hint(x)
        if hint is not None:
            raise ValueError(f"{where}: input {hint}")


def check_model_input(
    x,
    name: str,
    input_shape,
    param: torch.Tensor,
    max_abs: float | None = None,
    integer_hint: str = "",
    values: bool = True,
    images: bool = False,
) -> None:
    """The docs/design.md input rules for any model taking preprocessed images (flows, and the
    PixelCNN++ / classifier baselines of ``detectors.baselines``): TypeError for non-tensors,
    integer dtypes and a dtype other than ``param``'s; ValueError for another device, wrong
    rank, channels or size, an empty batch, NaN / Inf; with ``images``, images that look
    unpreprocessed (``unpreprocessed_hint``: no negative value and a maximum above 0.5); with
    ``max_abs`` (models whose inputs are bounded, e.g. discrete ones), values with
    |x| > max_abs.  ``integer_hint`` is appended to the integer-dtype message.

    The value checks (``values=True``) read x once (one host sync on CUDA); they are skipped
    while a CUDA graph is being captured, where a sync is not allowed.  Under ``torch.compile``
    they cause no graph break: on the CPU they become ``torch._assert_async`` checks inside the
    graph (a ``RuntimeError`` with the same message at run time, see ``assert_values``); on CUDA
    they are skipped, as during graph capture (a failed device-side assert would poison the CUDA
    context).  The type, dtype, device and shape checks run in both modes."""
    expected = "[B, " + ", ".join(map(str, input_shape)) + "]"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name}: expected floating inputs preprocessed into [-0.5, 0.5] "
            f"(invflow.data.preprocess), got dtype {x.dtype}{integer_hint}"
        )
    if x.dtype != param.dtype:
        raise TypeError(
            f"{name}: input dtype {x.dtype} differs from the model's {param.dtype}; "
            f"convert one of them (model.to(dtype) or x.to(dtype))"
        )
    if x.device != param.device:
        raise ValueError(f"{name}: input on {x.device} but the model is on {param.device}")
    if x.dim() != len(input_shape) + 1:
        raise ValueError(f"{name}: expected input of shape {expected}, got {list(x.shape)}")
    if tuple(x.shape[1:]) != tuple(input_shape):
        what = "channels" if x.shape[1] != input_shape[0] else "size"
        raise ValueError(f"{name}: wrong {what}: expected input of shape {expected}, got {list(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: empty batch")
    if not values or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    if torch.compiler.is_compiling():
        _assert_model_input_values(x, name, max_abs, images)
        return
    lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()  # the one sync (NaN propagates)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name}: input contains NaN or Inf")
    if images and lo >= 0 and hi > IMAGE_RANGE:
        check_preprocessed(x, name)
    if max_abs is not None and max(-lo, hi) > max_abs:
        check_preprocessed(x, name)  # raw pixels: say so
        raise ValueError(
            f"{name}: input values outside [-{max_abs:g}, {max_abs:g}] (min {lo:.4g}, max {hi:.4g}); "
            f"this model takes preprocessed 8-bit images only (invflow.data.preprocess)"
        )


def _assert_model_input_values(x: torch.Tensor, name: str, max_abs: float | None, images: bool) -> None:
    """The value checks of ``check_model_input`` inside a compiled graph (no host sync, no graph
    break): NaN / Inf, and raw pixel values for image models or values beyond ``max_abs``."""
    lo, hi = torch.aminmax(x.detach())
    assert_values(torch.isfinite(lo) & torch.isfinite(hi), f"{name}: input contains NaN or Inf")
    if images:
        assert_values(
            ~((lo >= 0) & (hi > IMAGE_RANGE)),
            f"{name}: input has no negative value and a maximum above {IMAGE_RANGE:g}: it looks like raw "
            f"pixel values (0..255 or ToTensor 0..1 floats), not preprocessed images; preprocess them "
            f"with invflow.data.preprocess",
        )
    if max_abs is not None:
        assert_values(
            torch.maximum(-lo, hi) <= max_abs,
            f"{name}: input values outside [-{max_abs:g}, {max_abs:g}]; this model takes preprocessed "
            f"8-bit images only (invflow.data.preprocess)",
        )


def assert_values(ok: torch.Tensor, message: str) -> bool:
    """A value check that ``torch.compile`` keeps in the graph: ``ok`` is a bool tensor of one
    element (computed from the data), ``message`` the one-line error.

    * eager: raises ``ValueError(message)`` when ``ok`` is False (one host sync);
    * compiled (``torch.compiler.is_compiling()``) on the CPU: ``torch._assert_async(ok,
      message)``, traced into the graph without a break; it raises ``RuntimeError`` carrying
      ``message`` when the compiled code runs on bad values;
    * compiled on CUDA, or while a CUDA graph is captured: skipped (a device-side assert would
      poison the CUDA context, and a host sync is not allowed there).

    Returns whether the check ran.  Use it instead of ``if not bool(ok): raise ...`` in code
    that ``torch.compile`` traces (a model's ``forward`` / ``log_prob``)."""
    if ok.is_cuda and (torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing()):
        return False
    if torch.compiler.is_compiling():
        torch._assert_async(ok, message)
        return True
    if not bool(ok):
        raise ValueError(message)
    return True
