"""The checks of the training exercises (17-19): SGD with momentum, AdamW, gradient clipping.

Each runs a few steps on given gradients and records the parameters after each.
Without the instructor's values, a judge checks what the update rule implies
in cases where the answer is simple: a constant gradient, a zero gradient.
"""
import numpy as np

from .judging import Case, CustomCheck, compare, compare_all, rng_for, submodule

STEPS = 3


def _grads(label, shape, constant):
    """(STEPS, *shape): the gradient at each step, the same at every step if ``constant``."""
    rng = rng_for(label, "grads")
    if constant == "zero":
        return np.zeros((STEPS, *shape))
    if constant:
        return np.broadcast_to(rng.standard_normal(shape), (STEPS, *shape)).copy()
    return rng.standard_normal((STEPS, *shape))


def _case(name, shape=(2, 3), constant=False, **hyper):
    return Case(name, {"p": rng_for(name, "p").standard_normal(shape), "grads": _grads(name, shape, constant), **hyper})


def _trajectory_shape(case):
    return {"params": (STEPS, *np.shape(case.inputs["p"])), "in_place": ()}


# ---- 17. SGD with momentum -------------------------------------------------------------------
def _sgd_cases():
    return [_case("plain SGD, lr 0.1", lr=0.1, momentum=0.0, weight_decay=0.0, nesterov=False),
            _case("momentum 0.9, a constant gradient", constant=True, lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False),
            _case("Nesterov momentum 0.5, a constant gradient", constant=True, lr=0.1, momentum=0.5, weight_decay=0.0,
                  nesterov=True),
            _case("weight decay 0.1, no momentum", lr=0.2, momentum=0.0, weight_decay=0.1, nesterov=False),
            _case("momentum 0.8, weight decay 0.01, Nesterov, changing gradients", shape=(4,), lr=0.05, momentum=0.8,
                  weight_decay=0.01, nesterov=True)]


def _run_sgd(package, case):
    """{"params": the parameter after each step (STEPS, ...), "in_place": 1 if p.data stayed the same array}."""
    h = case.inputs
    p = package.Tensor(np.array(h["p"]), requires_grad=True)
    data = p.data
    optimizer = submodule(package, "optim").SGD([p], lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"],
                                  nesterov=h["nesterov"])
    params = []
    for g in h["grads"]:
        p.grad = np.array(g)
        optimizer.step()
        params.append(package.to_numpy(p.data).astype(np.float64))
    return {"params": np.stack(params), "in_place": np.float64(p.data is data)}


def _sgd_prediction(case):
    """The parameters after each step where the rule has a simple closed form, else None.

    No momentum: p <- p - lr (g + wd p). Momentum m, a constant g and no decay: after
    t steps the buffer is b_t = g (1 + m + ... + m^(t-1)) = g (1 - m^t) / (1 - m), and the
    step is lr b_t, or lr (g + m b_t) with Nesterov.
    """
    h = case.inputs
    lr, m, grads = h["lr"], h["momentum"], h["grads"]
    if m == 0:
        p, params = np.array(h["p"]), []
        for g in grads:
            p = p - lr * (g + h["weight_decay"] * p)
            params.append(p)
        return np.stack(params)
    if h["weight_decay"] or np.any(grads != grads[0]):
        return None
    t = np.arange(1, STEPS + 1).reshape(-1, *[1] * grads[0].ndim)
    buffers = grads[0] * (1 - m ** t) / (1 - m)
    steps = lr * (grads[0] + m * buffers if h["nesterov"] else buffers)
    return h["p"] - np.cumsum(steps, axis=0)


def _judge_sgd(case, arrays, expected):
    return _judge_trajectory(case, arrays, expected, _sgd_prediction(case), "SGD")


def _judge_trajectory(case, arrays, expected, prediction, name):
    if arrays.get("in_place", 1) != 1:
        return f"{name} replaced p.data with a new array: update it in place (p.data -= ...), as torch.optim does"
    if expected is not None:
        message = compare_all(arrays, expected, ("params",), {"params": "the parameter after each step"})
        if message:
            return message
    if prediction is not None:
        return compare("the parameter after each step", arrays["params"], prediction)
    return None


# ---- 18. AdamW -------------------------------------------------------------------------------
def _adamw_cases():
    common = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)
    return [_case("a constant gradient, no weight decay", constant=True, weight_decay=0.0, **common),
            _case("a zero gradient, weight decay 0.1: only the decay acts", constant="zero", weight_decay=0.1, **common),
            _case("changing gradients, weight decay 0.01", weight_decay=0.01, **common),
            _case("betas (0.5, 0.7), eps 0.1, weight decay 0.2", shape=(5,), lr=0.1, beta1=0.5, beta2=0.7, eps=0.1,
                  weight_decay=0.2)]


def _run_adamw(package, case):
    """adamw_update for STEPS steps: the parameter after each and the final moments (all updated in place)."""
    h = case.inputs
    p = np.array(h["p"])
    m, v = np.zeros_like(p), np.zeros_like(p)
    params = []
    update = submodule(package, "optim").adamw_update
    for t, g in enumerate(h["grads"], 1):
        update(p, np.array(g), m, v, t, h["lr"], h["beta1"], h["beta2"], h["eps"], h["weight_decay"])
        params.append(p.copy())
    return {"params": np.stack(params), "exp_avg": m.copy(), "exp_avg_sq": v.copy()}


def _adamw_shapes(case):
    shape = np.shape(case.inputs["p"])
    return {"params": (STEPS, *shape), "exp_avg": shape, "exp_avg_sq": shape}


def _adamw_prediction(case):
    """Closed forms. A constant gradient g: m = g (1 - beta1^t), v = g^2 (1 - beta2^t), so the
    bias-corrected step is lr g / (|g| + eps) every time. A zero gradient: only the decay, p (1 - lr wd)^t."""
    h = case.inputs
    g, p0 = h["grads"][0], h["p"]
    if np.any(h["grads"] != g):
        return None
    t = np.arange(1, STEPS + 1).reshape(-1, *[1] * p0.ndim)
    if not np.any(g):
        return {"params": p0 * (1 - h["lr"] * h["weight_decay"]) ** t}
    if h["weight_decay"] == 0:
        return {"params": p0 - t * h["lr"] * g / (np.abs(g) + h["eps"]), "exp_avg": g * (1 - h["beta1"] ** STEPS),
                "exp_avg_sq": g * g * (1 - h["beta2"] ** STEPS)}
    return None


def _judge_adamw(case, arrays, expected):
    prediction = _adamw_prediction(case) or {}
    labels = {"params": "the parameter after each step", "exp_avg": "the first moment m", "exp_avg_sq": "the second moment v"}
    message = _judge_trajectory(case, arrays, expected, None, "adamw_update")
    if message:
        return message
    if expected is not None:
        message = compare_all(arrays, expected, ("exp_avg", "exp_avg_sq"), labels)
        if message:
            return message
    for key, value in prediction.items():
        message = compare(labels[key], arrays[key], value)
        if message:
            return message + _adamw_advice(case)
    return None


def _adamw_advice(case):
    if not np.any(case.inputs["grads"]):
        return " (with g = 0, AdamW only shrinks p by lr * weight_decay * p each step: the decay is decoupled from g)"
    return " (with a constant g, the bias-corrected step is lr * g / (|g| + eps) at every step, the first one too)"


# ---- 19. Gradient clipping -------------------------------------------------------------------
def _clip_cases():
    def case(name, max_norm, scale, shapes=((2, 3), (4,), ())):
        grads = {f"g{i}": scale * rng_for(name, i).standard_normal(shape) for i, shape in enumerate(shapes)}
        return Case(name, {"max_norm": max_norm, **grads})
    return [case("a joint norm above max_norm 1.0: all gradients scale down together", 1.0, 3.0),
            case("a joint norm below max_norm 100: nothing changes", 100.0, 1.0),
            case("one parameter (5,), max_norm 0.5", 0.5, 2.0, shapes=((5,),))]


def _clip_grads(case):
    return [case.inputs[key] for key in sorted(case.inputs) if key.startswith("g")]


def _run_clip(package, case):
    """clip_grad_norm over parameters holding the case's gradients: the norm it returns and the gradients after."""
    params = []
    for g in _clip_grads(case):
        p = package.Tensor(np.zeros(np.shape(g)), requires_grad=True)
        p.grad = np.array(g)
        params.append(p)
    total = submodule(package, "optim").clip_grad_norm(params, case.inputs["max_norm"])
    after = np.concatenate([package.to_numpy(p.grad).astype(np.float64).reshape(-1) for p in params])
    return {"total": np.asarray(package.to_numpy(total), dtype=np.float64).reshape(()), "grads": after}


def _clip_shapes(case):
    return {"total": (), "grads": (sum(np.size(g) for g in _clip_grads(case)),)}


def _judge_clip(case, arrays, expected):
    before = np.concatenate([np.reshape(g, -1) for g in _clip_grads(case)])
    total = np.sqrt(np.sum(before ** 2))  # the definition: the L2 norm of all gradients as one vector
    message = compare("the returned norm (before clipping)", arrays["total"], np.array(total))
    if message:
        return message + " (it is the L2 norm of all gradients together, as one long vector)"
    factor = min(1.0, case.inputs["max_norm"] / (total + 1e-6))
    message = compare("the gradients after clipping", arrays["grads"], before * factor)
    if message:
        return f"{message} (each should be multiplied by min(1, max_norm / (norm + 1e-6)) = {factor:.6g})"
    return compare_all(arrays, expected) if expected is not None else None


CHECKS = {
    17: CustomCheck(_sgd_cases, _run_sgd, _trajectory_shape, _judge_sgd),
    18: CustomCheck(_adamw_cases, _run_adamw, _adamw_shapes, _judge_adamw),
    19: CustomCheck(_clip_cases, _run_clip, _clip_shapes, _judge_clip),
}
