"""Optimizers against torch.optim (float64, several steps), clip_grad_norm against torch, the schedule by formula."""
import math

import numpy as np
import pytest

from minilora import backend, to_numpy
from minilora.autograd import Tensor
from minilora.nn import Parameter
from minilora.optim import SGD, AdamW, clip_grad_norm, warmup_cosine

SHAPES = [(3, 4), (5,), (2, 3, 2)]


def make_pair(torch, seed=0):
    """The same float64 weights as minilora Parameters and as torch leaf tensors."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) for s in SHAPES]
    ours = [Parameter(a.copy(), dtype=np.float64) for a in arrays]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    return ours, theirs


def run_steps(torch, ours, theirs, opt, ref, steps=5, seed=1, skip_index=None):
    """Give both sides the same random gradients for ``steps`` steps; parameter ``skip_index`` gets none."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        for i, (p, q) in enumerate(zip(ours, theirs)):
            g = rng.standard_normal(p.shape)
            p.grad, q.grad = (None, None) if i == skip_index else (backend.asarray(g), torch.tensor(g.copy()))
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.numpy(), q.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.oracle
@pytest.mark.parametrize("momentum, weight_decay, nesterov", [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.1, True), (0.5, 0.01, False)])
def test_sgd_matches_torch(torch, momentum, weight_decay, nesterov):
    ours, theirs = make_pair(torch)
    opt = SGD(ours, lr=0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    ref = torch.optim.SGD(theirs, lr=0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    run_steps(torch, ours, theirs, opt, ref, skip_index=1)


@pytest.mark.oracle
@pytest.mark.parametrize("weight_decay, betas", [(0.01, (0.9, 0.999)), (0.0, (0.8, 0.99)), (0.5, (0.9, 0.95))])
def test_adamw_matches_torch(torch, weight_decay, betas):
    ours, theirs = make_pair(torch)
    opt = AdamW(ours, lr=1e-2, betas=betas, eps=1e-8, weight_decay=weight_decay)
    ref = torch.optim.AdamW(theirs, lr=1e-2, betas=betas, eps=1e-8, weight_decay=weight_decay)
    run_steps(torch, ours, theirs, opt, ref, steps=6, skip_index=2)


@pytest.mark.oracle
def test_adamw_state_dict_resumes_exactly(torch):
    ours, theirs = make_pair(torch)
    opt = AdamW(ours, lr=1e-2)
    ref = torch.optim.AdamW(theirs, lr=1e-2)
    run_steps(torch, ours, theirs, opt, ref, steps=3)
    # Rebuild the optimizer from its saved state (as NumPy copies) and continue on both sides.
    saved = opt.state_dict()
    saved = {"hyperparameters": saved["hyperparameters"],
             "state": {str(i): {k: to_numpy(v).copy() for k, v in s.items()} for i, s in saved["state"].items()}}
    resumed = AdamW(ours, lr=123.0)
    resumed.load_state_dict(saved)
    assert resumed.lr == 1e-2 and resumed.state[0]["step"] == 3
    run_steps(torch, ours, theirs, resumed, ref, steps=3, seed=7)


def test_frozen_parameters_get_no_state():
    frozen = Parameter(np.ones(3), requires_grad=False)
    live = Parameter(np.ones(3))
    live.grad = backend.asarray(np.ones(3))
    frozen.grad = backend.asarray(np.ones(3))  # a stray gradient on a frozen weight must still be ignored
    opt = AdamW([frozen, live], lr=0.1)
    opt.step()
    assert list(opt.state) == [1]
    np.testing.assert_array_equal(frozen.numpy(), np.ones(3))


def test_load_state_dict_names_bad_shapes():
    p = Parameter(np.zeros((2, 2)))
    opt = AdamW([p])
    bad = {"hyperparameters": {"lr": 0.1}, "state": {"0": {"step": 1, "exp_avg": np.zeros(3), "exp_avg_sq": np.zeros(3)}}}
    with pytest.raises(ValueError, match=r"exp_avg.*\(3,\).*\(2, 2\)"):
        opt.load_state_dict(bad)


@pytest.mark.parametrize("state, message", [
    ({"0": {"step": 1, "exp_avg": np.ones((2, 2))}}, r"holds \['exp_avg', 'step'\].*keeps \['exp_avg', 'exp_avg_sq', 'step'\]"),
    ({"0": {"step": -1, "exp_avg": np.ones((2, 2)), "exp_avg_sq": np.ones((2, 2))}}, r"counter 'step'.*-1"),
    ({"0": {"step": 1.5, "exp_avg": np.ones((2, 2)), "exp_avg_sq": np.ones((2, 2))}}, r"counter 'step'.*1\.5"),
    ({"3": {"step": 1, "exp_avg": np.ones((2, 2)), "exp_avg_sq": np.ones((2, 2))}}, r"parameter 3.*1 parameters"),
])
def test_load_state_dict_refuses_incomplete_state_and_changes_nothing(state, message):
    p = Parameter(np.ones((2, 2)))
    opt = AdamW([p], lr=0.1)
    p.grad = p.data.copy()  # ones, on the parameter's backend
    opt.step()
    before = {name: np.copy(to_numpy(value)) for name, value in opt.state[0].items()}
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict({"hyperparameters": {"lr": 0.5}, "state": state})
    assert opt.lr == 0.1
    assert all(np.array_equal(to_numpy(opt.state[0][name]), value) for name, value in before.items())


def test_load_state_dict_refuses_unknown_hyperparameters():
    opt = SGD([Parameter(np.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match=r"\['betas'\].*SGD"):
        opt.load_state_dict({"hyperparameters": {"lr": 0.1, "betas": [0.9, 0.999]}, "state": {}})


def test_bad_hyperparameters_raise():
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        AdamW([])
    with pytest.raises(ValueError, match="nesterov"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        AdamW([p], betas=(1.0, 0.9))


@pytest.mark.oracle
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(torch, max_norm):
    ours, theirs = make_pair(torch)
    rng = np.random.default_rng(3)
    for p, q in zip(ours, theirs):
        g = rng.standard_normal(p.shape)
        p.grad, q.grad = backend.asarray(g), torch.tensor(g.copy())
    ours[1].grad = theirs[1].grad = None
    total = clip_grad_norm(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    np.testing.assert_allclose(float(total), expected.item(), rtol=1e-12)
    for p, q in zip(ours, theirs):
        if p.grad is not None:
            np.testing.assert_allclose(to_numpy(p.grad), q.grad.numpy(), rtol=1e-12)


def test_clip_grad_norm_keeps_float32():
    p = Tensor(np.zeros(4, dtype=np.float32), requires_grad=True)
    p.grad = backend.asarray(np.full(4, 10.0, dtype=np.float32))
    total = clip_grad_norm([p], 1.0)
    assert p.grad.dtype == np.float32
    assert abs(float(total) - 20.0) < 1e-4
    assert abs(float(np.linalg.norm(to_numpy(p.grad))) - 1.0) < 1e-4


def test_warmup_cosine_known_points():
    kw = dict(warmup_steps=10, total_steps=110, max_lr=1.0, min_lr=0.1)
    assert warmup_cosine(0, **kw) == pytest.approx(0.1)  # (0 + 1) / 10 of the peak
    assert warmup_cosine(9, **kw) == pytest.approx(1.0)  # warmup ends at the peak
    assert warmup_cosine(10, **kw) == pytest.approx(1.0)  # cosine starts at the peak
    assert warmup_cosine(60, **kw) == pytest.approx(0.55)  # halfway: (max + min) / 2
    assert warmup_cosine(35, **kw) == pytest.approx(0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2)  # a quarter: cos(pi/4)
    assert warmup_cosine(110, **kw) == pytest.approx(0.1)
    assert warmup_cosine(10_000, **kw) == pytest.approx(0.1)
    assert warmup_cosine(5, warmup_steps=0, total_steps=10, max_lr=2.0) == pytest.approx(1 + math.cos(math.pi / 2))
