"""The experiments of the papers, run on the detectors of this package.

* :mod:`.config` -- :class:`RunConfig`, the settings of a run (``DemoConfig`` and
  ``ReproduceConfig``: the same with the demo's and the experiments' defaults);
* :mod:`.runs` -- the pieces the runs share: training with resume, the detector sets of the
  papers built from trained models, feature-space detectors and flows, the zoo models;
* :mod:`.protocols` -- dataset vs dataset and one-vs-rest evaluation;
* :mod:`.demo` -- ``python -m detectors demo``: Fashion-MNIST vs MNIST with every detector;
* :mod:`.reproduce` -- ``python -m detectors reproduce``: the papers' experiments over seeds;
* :mod:`.ood_suite` -- ``python -m detectors ood-suite``: the zoo detectors on many OOD kinds;
* :mod:`.analysis` -- the analyses and plots of the papers (pixel differences, Fourier mixes,
  correlations, latents, coupling scales and shifts).
* :mod:`.findings` -- the papers' last two findings on paired zoo models, over seeds;
* :mod:`.fit_defaults` -- a ``detectors fit`` bundle against the suite and 7 more OOD kinds;
* :mod:`.rgb_example` -- ``fit`` with its defaults on colour tissue patches, end to end;
* :mod:`.photometric` -- why darkened (gamma 2) garments stay undetected.

The last four run as ``python -m detectors.experiments.NAME``; each reports a user error in one
line with exit status 2.

``detectors.experiments`` was one module; its names now live in :mod:`.runs` and stay
importable from here for one release with a ``DeprecationWarning``.
"""

from __future__ import annotations

import importlib
import warnings

from .config import DemoConfig, ReproduceConfig, RunConfig

_MOVED_TO_RUNS = (
    "Memoized",
    "train_model",
    "flow_detectors",
    "mass_detectors",
    "feature_detectors",
    "FEATURE_FLOWS",
    "feature_flows",
    "ZOO_ROLES",
    "zoo_models",
    "DEMO_ENSEMBLES",
    "ensembles",
)


def __getattr__(name: str):
    if name in _MOVED_TO_RUNS:
        warnings.warn(
            f"detectors.experiments.{name} is deprecated; import it from detectors.experiments.runs",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(".runs", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RunConfig",
    "DemoConfig",
    "ReproduceConfig",
    "analysis",
    "config",
    "demo",
    "ood_suite",
    "protocols",
    "reproduce",
    "runs",
]
