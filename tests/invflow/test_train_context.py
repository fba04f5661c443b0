"""The Trainer on conditional models: (x, context) batches, labels for a label-embedding
flow, errors; unconditional (x, labels) data keep their meaning."""

from __future__ import annotations

import pytest
import torch

import invflow
from invflow.train import Batch, Trainer, drop_non_finite, log_prob_dropping_non_finite, nll

D64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: threads only contend (the suite runs in parallel)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy(n=256, seed=0):
    """x = (c, -c) + noise: the conditional density is far tighter than the marginal."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, 1, generator=g, dtype=D64) * 2
    x = torch.cat([c, -c], 1) + 0.1 * torch.randn(n, 2, generator=g, dtype=D64)
    return x, c


def test_trainer_on_x_context_batches_lowers_the_conditional_nll(tmp_path):
    torch.manual_seed(0)
    x, c = toy()
    model = invflow.VectorFlow(2, blocks=2, hidden=16, context_dim=1).double()
    trainer = Trainer(
        model, (x, c), str(tmp_path / "run"), steps=60, batch_size=64, lr=5e-3, warmup=1, progress=False
    )
    batch = trainer._batch(0)
    assert batch.context is not None and batch.context.shape == (64, 1) and batch.y is None
    # the context rows belong to the examples of the batch
    rows = [int((x == r).all(1).nonzero()) for r in batch.x]
    torch.testing.assert_close(batch.context, c[rows])
    trainer.initialize()
    before = nll(trainer.model.eval(), batch)[0].item()
    trainer.fit()
    after = nll(trainer.model.eval(), batch)[0].item()
    assert after < before - 0.5, (before, after)
    loaded = invflow.load(str(tmp_path / "run" / "step-0000060" / "model.safetensors")).double()
    assert loaded.is_conditional
    torch.testing.assert_close(
        loaded.log_prob(x[:4], context=c[:4]), model.eval().log_prob(x[:4], context=c[:4])
    )


def test_trainer_on_a_class_embedding_flow_reads_labels_as_the_context(tmp_path):
    torch.manual_seed(0)
    y = torch.arange(120) % 3
    x = torch.randn(120, 2, dtype=D64) * 0.2 + torch.stack([y.double(), -y.double()], 1)
    flow = invflow.ClassEmbeddingFlow(invflow.VectorFlow(2, blocks=2, hidden=16, context_dim=4), 3).double()
    trainer = Trainer(
        flow, (x, y), str(tmp_path / "run"), steps=40, batch_size=40, lr=1e-2, warmup=1, progress=False
    )
    batch = trainer._batch(0)
    assert batch.context.dtype == torch.long and torch.equal(batch.y, batch.context)
    trainer.initialize()
    before = nll(flow.eval(), batch)[0].item()
    trainer.fit()
    after = nll(flow.eval(), batch)[0].item()
    assert after < before - 0.3, (before, after)
    # the learned embedding separates the classes: the own class is mostly the most likely one
    assert (flow.class_log_probs(x).argmax(1) == y).double().mean() > 0.6  # chance: 1 / 3


def test_trainer_refuses_conditional_data_it_cannot_use(tmp_path):
    x, c = toy(32)
    model = invflow.VectorFlow(2, blocks=1, hidden=4, context_dim=1).double()
    with pytest.raises(ValueError, match=r"VectorFlow is conditional: data must be \(examples, context\)"):
        Trainer(model, x, str(tmp_path / "a"))
    with pytest.raises(ValueError, match="one row per example"):
        Trainer(model, (x, c[:10]), str(tmp_path / "b"))
    with pytest.raises(ValueError, match="context contains NaN"):
        Trainer(model, (x, c / 0.0), str(tmp_path / "c"))
    g = invflow.Glow(1, 4, levels=1, steps=1, hidden=4, context_channels=2).double()
    imgs = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)
    with pytest.raises(ValueError, match="flip / translate"):
        Trainer(g, (imgs, torch.randn(8, 2, 4, 4)), str(tmp_path / "d"), flip=True)
    # an image context without augmentation trains (one step), cast to the model's dtype
    t = Trainer(
        g, (imgs, torch.randn(8, 2, 4, 4)), str(tmp_path / "e"), steps=1, batch_size=4, progress=False
    )
    assert t._batch(0).context.dtype == D64
    t.fit()


def test_unconditional_models_keep_x_label_batches(tmp_path):
    x = torch.randn(16, 2, dtype=D64)
    labels = torch.arange(16) % 2
    t = Trainer(
        invflow.VectorFlow(2, blocks=1, hidden=4).double(), (x, labels), str(tmp_path / "r"), batch_size=4
    )
    b = t._batch(0)
    assert b.context is None and b.y is not None and b.y.shape == (4,)


def test_dropping_non_finite_rows_keeps_their_context_rows():
    torch.manual_seed(0)
    model = invflow.VectorFlow(2, blocks=1, hidden=4, context_dim=1).double()
    x, c = toy(6)
    x[2, 0] = 1e300  # overflows to inf in the flow: dropped
    calls = []

    def fn(t, ctx):
        calls.append((t.shape[0], ctx.shape[0]))
        return model.log_prob(t.clamp(-1e3, 1e3), context=ctx) * torch.where(
            t.abs().max(1).values > 1e3, float("inf"), 1.0
        )

    out = drop_non_finite(fn, x, context=c)
    assert calls == [(6, 6), (5, 5)] and torch.isinf(out[2]) and torch.isfinite(out[[0, 1, 3, 4, 5]]).all()
    lp = log_prob_dropping_non_finite(model, x[[0, 1]], c[[0, 1]])
    torch.testing.assert_close(lp, model.log_prob(x[[0, 1]], context=c[[0, 1]]))
    assert nll(model, Batch(x=x[[0, 1]], context=c[[0, 1]]))[0].isfinite()
