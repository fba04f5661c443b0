"""Input value checks on CUDA cost a host sync: training checks the first batch only, eval
checks every batch (scores of unpreprocessed images are garbage), CUDA graphs skip them."""

from __future__ import annotations

import pytest
import torch

import invflow

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_training_checks_the_first_batch_eval_checks_all():
    model = invflow.Glow(1, 4, levels=1, steps=1, hidden=4).cuda().train()
    bad = torch.rand(2, 1, 4, 4, device="cuda")  # ToTensor-style 0..1 floats
    with pytest.raises(ValueError, match="outside"):
        model(bad)
    good = torch.rand(2, 1, 4, 4, device="cuda") - 0.5
    model(good)
    model(bad)  # later training batches are not read back (no host sync per step)
    model.eval()
    with pytest.raises(ValueError, match="outside"):
        model(bad)
