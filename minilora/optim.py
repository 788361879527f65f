"""Optimizers (SGD, AdamW), the warmup + cosine learning-rate schedule, and gradient clipping.

Every optimizer follows torch.optim's update rules exactly, so a step here and
a step there agree to rounding. The update formula is written beside each line.

    opt = AdamW(model.parameters(), lr=3e-4)
    loss.backward()
    clip_grad_norm(opt.params, 1.0)
    opt.step()
    opt.zero_grad()

Updates happen in place on ``p.data`` and never read a value back to the host,
so a step on CuPy arrays queues GPU work and returns at once. Parameters
without ``requires_grad`` get no state; parameters whose ``.grad`` is None
(frozen, or unused this step) are skipped, as in PyTorch.
"""
import math

import numpy as np

from . import backend
from .autograd import fast_or_reference


class Optimizer:
    """Holds the parameter list, the learning rate ``lr`` and per-parameter state.

    ``state[i]`` belongs to ``params[i]``; keying by position (not by object)
    lets ``load_state_dict`` restore it into a freshly built model. Each
    ``state[i]`` holds exactly the names in ``state_names``.
    """

    state_names = ()

    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list. Fix: pass model.parameters() of a model that has weights.")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("optimizer got the same parameter twice; it would be updated twice per step. Fix: pass each once.")
        if not lr >= 0:
            raise ValueError(f"learning rate must be >= 0, got lr={lr}")
        self.lr = lr
        self.state = {}

    def _params_with_grad(self):
        """(index, parameter) for every parameter that requires grad and has one this step."""
        return [(i, p) for i, p in enumerate(self.params) if p.requires_grad and p.grad is not None]

    def zero_grad(self):
        """Forget the gradients (set them to None, PyTorch's default), so the next backward starts fresh."""
        for p in self.params:
            p.grad = None

    def step(self):
        raise NotImplementedError

    def hyperparameters(self):
        """The numbers that define the update rule (a JSON-friendly dict)."""
        return {"lr": self.lr}

    def state_dict(self):
        """{"hyperparameters": {...}, "state": {index: {name: array or int}}}; arrays are the live ones."""
        return {"hyperparameters": self.hyperparameters(), "state": {i: dict(s) for i, s in self.state.items()}}

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and state saved by ``state_dict`` (arrays are copied to each parameter's backend).

        Everything is checked first: on an error, nothing has changed.
        """
        fix = f"Fix: load a state_dict that {type(self).__name__} saved over the same parameters, in the same order."
        unknown = sorted(set(state_dict["hyperparameters"]) - set(self.hyperparameters()))
        if unknown:
            raise ValueError(f"optimizer hyperparameters {unknown} are not {type(self).__name__}'s "
                             f"(it has {sorted(self.hyperparameters())}). {fix}")
        state = {}
        for key, entries in state_dict["state"].items():
            i = int(key)
            if not 0 <= i < len(self.params):
                raise ValueError(f"optimizer state names parameter {i}, but this optimizer has {len(self.params)} parameters. {fix}")
            if sorted(entries) != sorted(self.state_names):
                raise ValueError(f"optimizer state of parameter {i} holds {sorted(entries)}, but {type(self).__name__} "
                                 f"keeps {sorted(self.state_names)} for each parameter. {fix}")
            p = self.params[i]
            restored = {}
            for name, value in entries.items():
                if np.ndim(value) == 0:  # a counter such as Adam's step
                    if not (np.issubdtype(np.asarray(value).dtype, np.integer) and value >= 0):
                        raise ValueError(f"optimizer counter {name!r} of parameter {i} is {value!r}, not an integer >= 0. {fix}")
                    restored[name] = int(value)
                    continue
                if tuple(np.shape(value)) != p.shape:
                    raise ValueError(f"optimizer state {name!r} of parameter {i} has shape {tuple(np.shape(value))}, "
                                     f"but the parameter has shape {p.shape}. {fix}")
                xp = backend.array_module(p.data)
                restored[name] = xp.array(backend.to_numpy(value), dtype=p.dtype)
            state[i] = restored
        for name, value in state_dict["hyperparameters"].items():
            setattr(self, name, tuple(value) if isinstance(value, list) else value)
        self.state = state


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and (coupled, L2) weight decay, as torch.optim.SGD.

    g = grad + weight_decay * p
    b = momentum * b + g                 (b = g at the first step)
    g = g + momentum * b  if nesterov else  b
    p = p - lr * g
    """

    state_names = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: momentum and weight_decay must be >= 0, got {momentum} and {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0. Fix: set momentum=0.9, say.")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay, "nesterov": self.nesterov}

    def step(self):
        # BEGIN SOLUTION 17 "SGD with momentum"
        for i, p in self._params_with_grad():
            g = p.grad
            if self.weight_decay:
                g = g + self.weight_decay * p.data  # g = grad + wd p  (L2 decay: part of the gradient)
            if self.momentum:
                state = self.state.setdefault(i, {})
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.copy()  # b = g at the first step
                else:
                    b = state["momentum_buffer"]
                    b *= self.momentum
                    b += g  # b = momentum b + g
                b = state["momentum_buffer"]
                g = g + self.momentum * b if self.nesterov else b  # look ahead along b, or follow b
            p.data -= self.lr * g  # p = p - lr g
        # END SOLUTION 17


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as torch.optim.AdamW.

    t = t + 1
    p = p - lr * weight_decay * p              (decay the weight itself, not the gradient)
    m = beta1 * m + (1 - beta1) * g            (first moment: a running mean of g)
    v = beta2 * v + (1 - beta2) * g^2          (second moment: a running mean of g^2)
    p = p - lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t)

    ``step`` keeps t and the moments per parameter and calls ``adamw_update``, the rule above on arrays.
    """

    state_names = ("step", "exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr)
        beta1, beta2 = betas
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"AdamW: betas must lie in [0, 1), got {tuple(betas)}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"AdamW: eps and weight_decay must be >= 0, got {eps} and {weight_decay}")
        self.betas, self.eps, self.weight_decay = (beta1, beta2), eps, weight_decay

    def hyperparameters(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def step(self):
        beta1, beta2 = self.betas
        for i, p in self._params_with_grad():
            xp = backend.array_module(p.data)
            state = self.state.get(i)
            if state is None:
                state = self.state[i] = {"step": 0, "exp_avg": xp.zeros_like(p.data), "exp_avg_sq": xp.zeros_like(p.data)}
            state["step"] += 1  # a Python int: reading it needs no sync
            update = fast_or_reference(adamw_update, p.data)  # on the GPU: one kernel, not eleven
            update(p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                   self.lr, beta1, beta2, self.eps, self.weight_decay)


def adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    """AdamW's step t (from 1) on arrays, in place: parameter p, its gradient g, the moments m and v (all one shape)."""
    # BEGIN SOLUTION 18 "AdamW"
    xp = backend.array_module(p)
    p -= lr * weight_decay * p  # decoupled weight decay: shrink the weight itself, not the gradient
    m[...] = beta1 * m + (1 - beta1) * g  # first moment: a running mean of g
    v[...] = beta2 * v + (1 - beta2) * g * g  # second moment: a running mean of g^2
    # The bias corrections undo the pull of m = v = 0 towards zero in the first steps.
    m_hat = m / (1 - beta1 ** t)
    sqrt_v_hat = xp.sqrt(v) / math.sqrt(1 - beta2 ** t)
    p -= lr * m_hat / (sqrt_v_hat + eps)
    # END SOLUTION 18


def warmup_cosine(step, warmup_steps, total_steps, max_lr, min_lr=0.0):
    """The learning rate at ``step`` (0-based): a linear warmup, then a cosine decay to ``min_lr``.

    step < warmup_steps:           max_lr * (step + 1) / warmup_steps
    warmup_steps <= step < total:  min_lr + (max_lr - min_lr) * (1 + cos(pi * s)) / 2,
                                   s = (step - warmup_steps) / (total_steps - warmup_steps)
    step >= total_steps:           min_lr
    """
    if warmup_steps < 0 or total_steps < warmup_steps:
        raise ValueError(f"warmup_cosine: need 0 <= warmup_steps <= total_steps, got {warmup_steps} and {total_steps}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def clip_grad_norm(params, max_norm):
    """Scale all gradients together so that their joint L2 norm is at most ``max_norm``, as torch.nn.utils.clip_grad_norm_.

    total = sqrt(sum over parameters of ||g||^2)
    g = g * min(1, max_norm / (total + 1e-6))

    Returns ``total`` (before clipping) as a 0-d array on the gradients' backend:
    ``float(total)`` would wait for the GPU, so the scaling is applied
    unconditionally (a factor of 1 when the norm is small) instead of branching.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return np.zeros(())
    # BEGIN SOLUTION 19 "Gradient clipping"
    xp = backend.array_module(grads[0])
    norms = xp.stack([xp.linalg.norm(g.reshape(-1)) for g in grads])  # (number of parameters,)
    total = xp.linalg.norm(norms)
    scale = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        g *= scale.astype(g.dtype)
    return total
    # END SOLUTION 19
