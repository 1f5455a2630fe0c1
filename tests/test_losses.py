import math

import pytest
import torch

from bridge.losses import CombinedLoss, InfoNCE, info_nce, make_loss


def test_info_nce_equals_hand_computed_value():
    # two rows, orthogonal unit targets: cos matrix is [[1, 0], [0, 1]] for pred == target
    p = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    s = [[1.0, 0.0], [0.6, 0.8]]  # cos(p_i, t_j)
    row = lambda i: -math.log(math.exp(s[i][i] / tau) / sum(math.exp(v / tau) for v in s[i]))
    col = lambda j: -math.log(math.exp(s[j][j] / tau) / sum(math.exp(s[i][j] / tau) for i in range(2)))
    expected = 0.5 * ((row(0) + row(1)) / 2 + (col(0) + col(1)) / 2)
    assert float(info_nce(p, t, tau)) == pytest.approx(expected, rel=1e-6)


def test_info_nce_multi_positive_labels():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    lab = torch.tensor([0, 0, 1])
    tau = 1.0
    # row 0: positives are columns 0 and 1 (cos 1 each), negative column 2 (cos 0)
    r0 = -math.log((2 * math.e) / (2 * math.e + 1))
    r2 = -math.log(math.e / (math.e + 2))
    expected = (r0 + r0 + r2) / 3  # symmetric: the matrix is symmetric here
    assert float(info_nce(p, t, tau, labels=lab)) == pytest.approx(expected, rel=1e-6)


def test_learnable_temperature_gets_gradient():
    loss = InfoNCE(temperature=0.1)
    p = torch.randn(8, 4, requires_grad=True)
    loss(p, torch.randn(8, 4)).backward()
    assert loss.log_t.grad is not None
    assert loss.temperature.item() == pytest.approx(0.1, rel=1e-5)


def test_make_loss_weighted_sum():
    p, t = torch.randn(6, 3), torch.randn(6, 3)
    comb = make_loss("infonce+0.5*mse")
    assert isinstance(comb, CombinedLoss) and comb.weights == {"infonce": 1.0, "mse": 0.5}
    val = comb(p, t).item()
    expected = comb.parts["infonce"] + 0.5 * comb.parts["mse"]
    assert val == pytest.approx(expected, rel=1e-5)
    assert comb.parts["mse"] == pytest.approx(float(((p - t) ** 2).sum(1).mean()), rel=1e-5)
    cos = make_loss("cosine")
    assert float(cos(p, p)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        make_loss("infonce+l1")
