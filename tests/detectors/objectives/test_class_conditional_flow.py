import math

import pytest
import torch

import invflow
from detectors import Likelihood
from detectors.experiments.protocols import evaluate_detectors, one_vs_rest, scores_for
from detectors.objectives.supervised import ClassConditionalFlow, supervised_objective
from invflow.train import Trainer


def _flow(k=3):
    torch.manual_seed(0)
    flow = ClassConditionalFlow(invflow.Glow(1, 8, levels=2, steps=1, hidden=8), num_classes=k).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return flow.eval()


def test_class_log_probs_change_only_the_prior():
    flow = _flow()
    x = (0.3 * torch.randn(5, 1, 8, 8, dtype=torch.float64)).clamp(-0.5, 0.5)
    out = flow.model(x)
    z = torch.cat([t.flatten(1) for t in out.latents], 1)
    std = -0.5 * (z.pow(2).sum(1) + z.shape[1] * math.log(2 * math.pi))
    expected = out.log_prob.unsqueeze(1) - std.unsqueeze(1) + flow.prior.class_log_probs(z)
    torch.testing.assert_close(flow.class_log_probs(x), expected)
    y = torch.tensor([0, 2, 1, 1, 0])
    torch.testing.assert_close(flow.log_prob(x, y), expected.gather(1, y.view(-1, 1)).squeeze(1))
    mix = torch.logsumexp(expected, 1) - math.log(3)
    torch.testing.assert_close(flow.log_prob(x), mix)
    res = flow(x)
    torch.testing.assert_close(res.log_prob, mix)
    torch.testing.assert_close(res.per_scale.sum(1), mix)


def test_class_conditional_density_is_normalised():
    torch.manual_seed(1)
    flow = ClassConditionalFlow(invflow.VectorFlow(2, blocks=2, hidden=8), num_classes=2).double().eval()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    g = torch.linspace(-40, 40, 801, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    cell = (g[1] - g[0]) ** 2
    with torch.no_grad():
        for k in range(2):
            mass = (flow.log_prob(pts, torch.full((len(pts),), k)).exp().sum() * cell).item()
            assert mass == pytest.approx(1.0, abs=1e-3)


def test_supervised_objective_trains(tmp_path):
    torch.manual_seed(0)
    flow = ClassConditionalFlow(invflow.Glow(1, 8, levels=2, steps=1, hidden=8), num_classes=3)
    general = invflow.Glow(1, 8, levels=2, steps=1, hidden=8)
    images = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(32) % 3
    trainer = Trainer(
        flow,
        (images, labels),
        str(tmp_path),
        objective=supervised_objective(general),
        steps=3,
        batch_size=8,
        progress=False,
        checkpoint_every=100,
    )
    summary = trainer.fit()
    assert summary["skipped"] == 0
    assert flow.prior.means.abs().sum() > 0  # the class modes moved apart from N(0, I)
    with pytest.raises(ValueError, match="labels"):
        supervised_objective()(flow, trainer._batch(0).__class__(x=trainer._batch(0).x))


def test_one_vs_rest_and_evaluate():
    x = torch.arange(20).view(20, 1).float()
    y = torch.arange(20) % 4
    tr_in, te_in, te_out = one_vs_rest(x, y, x, y, normal_class=1)
    assert (y[tr_in.long().view(-1)] == 1).all() and len(te_in) == 5 and len(te_out) == 15
    with pytest.raises(ValueError):
        one_vs_rest(x, y, x, y, normal_class=7)

    class Dist:
        def score(self, v):
            return v.view(-1).double()

    res = evaluate_detectors({"d": Dist()}, torch.zeros(4, 1), torch.ones(4, 1))
    assert res["d"]["auroc"] == 1.0
    s = scores_for({"d": Dist()}, torch.zeros(2, 1), torch.ones(3, 1))
    assert len(s["d"][0]) == 2 and len(s["d"][1]) == 3


def test_likelihood_detector_on_the_mixture():
    flow = _flow()
    x = (0.3 * torch.randn(4, 1, 8, 8, dtype=torch.float64)).clamp(-0.5, 0.5)
    torch.testing.assert_close(Likelihood(flow).score(x), -flow.log_prob(x).detach())


def test_checkpoint_round_trip(tmp_path):
    flow = _flow()
    invflow.save(flow, tmp_path / "f.safetensors")
    back = invflow.load(tmp_path / "f.safetensors").double().eval()
    x = (0.3 * torch.randn(3, 1, 8, 8, dtype=torch.float64)).clamp(-0.5, 0.5)
    torch.testing.assert_close(back.class_log_probs(x), flow.class_log_probs(x))
