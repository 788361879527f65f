"""Realistic bugs, planted one at a time into a solution to prove that the grader catches them.

Each Bug is a text patch into the body of exercise ``number``'s solution (any of its
regions): ``old`` must occur there exactly once, so that the list cannot rot when the
solution changes (``apply`` raises otherwise). tests/test_assignment_planted_bugs.py
plants each one into a full-solution student copy and asserts that the grader fails
exactly that exercise.
"""
import dataclasses
from pathlib import Path

from minilora.assignment.exercises import find_regions


@dataclasses.dataclass(frozen=True)
class Bug:
    number: int
    name: str
    old: str
    new: str

    @property
    def id(self):
        return f"{self.number:02d}-{self.name}"


BUGS = [
    # 1. Topological order
    Bug(1, "visited-never-marked", "        visited.add(id(node))\n", ""),
    Bug(1, "inputs-after-outputs", "    return order\n", "    return order[::-1]\n"),
    Bug(1, "constants-included", "if parent is not None and parent.requires_grad and", "if parent is not None and"),
    # 2. unbroadcast
    Bug(2, "mean-over-leading-axes", "grad = grad.sum(axis=tuple(range(extra)))", "grad = grad.mean(axis=tuple(range(extra)))"),
    Bug(2, "keepdims-dropped", "grad.sum(axis=stretched, keepdims=True)", "grad.sum(axis=stretched)"),
    Bug(2, "extra-axes-sign", "extra = grad.ndim - len(shape)", "extra = len(shape) - grad.ndim"),
    # 3. The backward loop
    Bug(3, "shared-gradient-overwritten", "grads[key] = parent_grad if key not in grads else grads[key] + parent_grad",
        "grads[key] = parent_grad"),
    Bug(3, "no-unbroadcast", "parent_grad = unbroadcast(parent_grad, parent.shape)", "parent_grad = parent_grad"),
    Bug(3, "forward-order", "for node in reversed(_topological_order(self)):", "for node in _topological_order(self):"),
    # 4. Numerical gradient
    Bug(4, "one-sided-step", "grad[i] = (values[0] - values[1]) / (2 * eps)", "grad[i] = (values[0] - values[1]) / eps"),
    Bug(4, "half-step", "flat[i] = original + step", "flat[i] = original + step / 2"),
    Bug(4, "sign", "for step in (eps, -eps):", "for step in (-eps, eps):"),
    # 5. Add, Sub and Neg (worked)
    Bug(5, "sub-sign", "return dy, -dy", "return dy, dy"),
    Bug(5, "neg-sign", "        return -dy\n", "        return dy\n"),
    Bug(5, "add-one-gradient", "        return dy, dy\n", "        return dy, None\n"),
    # 6. Mul and Div
    Bug(6, "mul-swapped", "db = dy * ctx.a", "db = dy * ctx.b"),
    Bug(6, "div-sign", "db = -ctx.a * dy / (ctx.b * ctx.b)", "db = ctx.a * dy / (ctx.b * ctx.b)"),
    Bug(6, "div-times", "da = dy / ctx.b", "da = dy * ctx.b"),
    # 7. Exp, Log, Tanh and Sigmoid
    Bug(7, "exp-forgets-y", "        return ctx.y * dy\n", "        return dy\n"),
    Bug(7, "log-times-x", "return dy / ctx.x", "return dy * ctx.x"),
    Bug(7, "tanh-not-squared", "(1 - ctx.y * ctx.y) * dy", "(1 - ctx.y) * dy"),
    Bug(7, "sigmoid-half", "return ctx.y * (1 - ctx.y) * dy", "return (1 - ctx.y) * dy"),
    # 8. MatMul
    Bug(8, "missing-transpose-da", "da = dy2 @ b2.swapaxes(-1, -2)", "da = dy2 @ b2"),
    Bug(8, "missing-transpose-db", "db = a2.swapaxes(-1, -2) @ dy2", "db = a2 @ dy2"),
    Bug(8, "vector-axis", "da = da[..., 0, :] if a.ndim == 1 else da", "da = da[..., 0] if a.ndim == 1 else da"),
    # 9. Linear
    Bug(9, "weight-grad-transposed", "dweight = dy2.T @ x2", "dweight = x2.T @ dy2"),
    Bug(9, "bias-mean", "dbias = dy2.sum(0)", "dbias = dy2.mean(0)"),
    Bug(9, "dx-transposed-weight", "dx = (dy2 @ weight)", "dx = (dy2 @ weight.T)"),
    # 10. Sum and Mean (worked)
    Bug(10, "mean-not-divided", "_expand(dy, ctx.axes, ctx.keepdims) / ctx.count", "_expand(dy, ctx.axes, ctx.keepdims)"),
    Bug(10, "mean-multiplied", "/ ctx.count", "* ctx.count"),
    Bug(10, "sum-doubled", "return xp.broadcast_to(_expand(dy, ctx.axes, ctx.keepdims), ctx.shape)",
        "return xp.broadcast_to(2 * _expand(dy, ctx.axes, ctx.keepdims), ctx.shape)"),
    # 11. Max and Var
    Bug(11, "ties-not-shared", "(_expand(dy, ctx.axes, ctx.keepdims) / ties)", "_expand(dy, ctx.axes, ctx.keepdims)"),
    Bug(11, "max-to-everything", "return ctx.is_max * (", "return (0 * ctx.is_max + 1) * ("),
    Bug(11, "var-missing-2", "return 2 * ctx.centered", "return ctx.centered"),
    # 12. GetItem and Embedding
    Bug(12, "getitem-duplicates-dropped", "backend.scatter_add(dx, ctx.index, grad)", "dx[ctx.index] += grad"),
    Bug(12, "embedding-duplicates-dropped",
        "backend.scatter_add(dweight, ctx.ids.reshape(-1), grad.reshape(-1, ctx.shape[1]))",
        "dweight[ctx.ids.reshape(-1)] += grad.reshape(-1, ctx.shape[1])"),
    Bug(12, "embedding-grad-to-ids", "return None, dweight", "return dweight, None"),
    # 13. Softmax and log-softmax
    Bug(13, "softmax-no-y-in-sum", "y * (dy - (dy * y).sum(axis=axis, keepdims=True))",
        "y * (dy - dy.sum(axis=axis, keepdims=True))"),
    Bug(13, "softmax-wrong-axis", "(dy * y).sum(axis=axis, keepdims=True)", "(dy * y).sum(axis=0, keepdims=True)"),
    Bug(13, "log-softmax-no-exp", "xp.exp(ctx.y) * dy.sum", "ctx.y * dy.sum"),
    # 14. Cross-entropy
    Bug(14, "ignored-rows-counted", "dlosses = dloss / ctx.count * keep", "dlosses = dloss / len(t) * keep"),
    Bug(14, "onehot-sign", "probs_minus_onehot[xp.arange(len(t)), t] -= 1", "probs_minus_onehot[xp.arange(len(t)), t] += 1"),
    Bug(14, "sum-as-mean", "dlosses = dloss * keep", "dlosses = dloss / ctx.count * keep"),
    Bug(14, "ignore-index-ignored", "dlosses = dloss.reshape(-1) * keep", "dlosses = dloss.reshape(-1) + 0 * keep"),
    # 15. LayerNorm
    Bug(15, "missing-xhat-term", " - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))", ")"),
    Bug(15, "bias-mean", "dbias = dy.sum(axis=rows)", "dbias = dy.mean(axis=rows)"),
    Bug(15, "weight-forgotten", "dxhat = dy * weight if weight is not None else dy", "dxhat = dy"),
    Bug(15, "dweight-without-xhat", "(dy * xhat).sum(axis=rows)", "dy.sum(axis=rows)"),
    # 16. Attention with the causal mask
    Bug(16, "mask-off-by-one", "k=S - T)", "k=S - T - 1)"),
    Bug(16, "mask-ignores-cache", "k=S - T)", "k=0)"),
    Bug(16, "dk-unscaled", "dk = scale * (dscores.swapaxes(-1, -2) @ q)", "dk = dscores.swapaxes(-1, -2) @ q"),
    Bug(16, "dv-untransposed", "dv = probs.swapaxes(-1, -2) @ dout", "dv = probs @ dout"),
    # 17. SGD with momentum
    Bug(17, "dampened-buffer", "                    b += g  # b", "                    b += (1 - self.momentum) * g  # b"),
    Bug(17, "decay-sign", "g = g + self.weight_decay * p.data", "g = g - self.weight_decay * p.data"),
    Bug(17, "nesterov-swapped", "g = g + self.momentum * b if self.nesterov else b", "g = b if self.nesterov else g + self.momentum * b"),
    Bug(17, "ascent", "p.data -= self.lr * g", "p.data += self.lr * g"),
    # 18. AdamW
    Bug(18, "no-bias-correction", "m_hat = m / (1 - beta1 ** t)", "m_hat = m"),
    Bug(18, "l2-not-decoupled", "p -= lr * weight_decay * p", "g = g + weight_decay * p"),
    Bug(18, "moment-not-in-place", "m[...] = beta1 * m + (1 - beta1) * g", "m = beta1 * m + (1 - beta1) * g"),
    Bug(18, "v-bias-correction-beta1", "math.sqrt(1 - beta2 ** t)", "math.sqrt(1 - beta1 ** t)"),
    # 19. Gradient clipping
    Bug(19, "sum-of-norms", "total = xp.linalg.norm(norms)", "total = norms.sum()"),
    Bug(19, "scales-up-too", "scale = xp.minimum(max_norm / (total + 1e-6), 1.0)", "scale = max_norm / (total + 1e-6)"),
    Bug(19, "returns-clipped-norm", "    return total\n", "    return total * scale\n"),
    # 20. lora_linear forward and backward
    Bug(20, "dB-unscaled", "dB = s * (dh.T @ ctx.z)", "dB = dh.T @ ctx.z"),
    Bug(20, "dz-unscaled", "dz = s * (dh @ ctx.B)", "dz = dh @ ctx.B"),
    Bug(20, "dx-misses-lora-path", "dx = (dh @ ctx.W0 + dx_lora)", "dx = (dh @ ctx.W0)"),
    Bug(20, "forward-unscaled", "h += scaling * (z @ B.T)", "h += z @ B.T"),
    # 21. Merge and unmerge
    Bug(21, "merge-sign", "w.data = w.data + self.delta_weight", "w.data = w.data - self.delta_weight"),
    Bug(21, "unmerge-sign", "w.data = w.data - self.delta_weight", "w.data = w.data + self.delta_weight"),
    Bug(21, "merge-twice", "w.data = w.data + self.delta_weight(self.active_adapter)",
        "w.data = w.data + 2 * self.delta_weight(self.active_adapter)"),
    # 22. Trainable parameters
    Bug(22, "counts-frozen", "trainable += p.size if p.requires_grad else 0", "trainable += p.size"),
    Bug(22, "biases-always-trainable", 'p.requires_grad_(bias == "all" and name.split(".")[-1] == "bias")',
        'p.requires_grad_(name.split(".")[-1] == "bias")'),
    Bug(22, "B-frozen", "            layer.lora_B[layer.active_adapter].requires_grad_(True)\n", ""),
    # 23. Subspace similarity
    Bug(23, "max-not-min", "/ np.minimum(i, j)", "/ np.maximum(i, j)"),
    Bug(23, "not-squared", "overlap = (U1.T @ U2) ** 2", "overlap = abs(U1.T @ U2)"),
    Bug(23, "one-cumsum", "overlap.cumsum(axis=0).cumsum(axis=1)", "overlap.cumsum(axis=0)"),
]


def apply(bug, package):
    """Plant ``bug`` into the student copy's package folder ``package`` (its exercise regions, in place).

    Raises AssertionError unless ``bug.old`` occurs exactly once in exercise ``bug.number``'s regions.
    """
    hits = []
    for path in sorted(Path(package).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "# BEGIN" not in text or "/assignment/" in path.as_posix():
            continue
        for region in find_regions(text, path.name):
            if region.number == bug.number and bug.old in region.body:
                hits += [(path, region)] * region.body.count(bug.old)
    if len(hits) != 1:
        raise AssertionError(f"planted bug {bug.id}: {bug.old!r} occurs {len(hits)} times in exercise {bug.number}'s "
                             "regions, not once. Fix: update tests/planted_bugs.py to the current solution")
    path, region = hits[0]
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[region.start_line:region.end_line - 1] = [region.body.replace(bug.old, bug.new)]
    path.write_text("".join(lines), encoding="utf-8")


def student_copies(folder):
    """(blank, full): a student copy with every exercise blanked, and the same with every region filled by the
    instructor's code (grade.solution_copy), both written under ``folder``."""
    import shutil

    from minilora.assignment.grade import solution_copy
    from minilora.assignment.make import make

    blank = make(Path(folder) / "blank")
    full = Path(folder) / "full"
    shutil.copytree(blank, full)
    solution_copy(full)
    return blank, full


def planted_copy(full, bug, folder):
    """A copy of the full-solution student copy ``full`` in ``folder`` with ``bug`` planted."""
    import shutil

    copy = Path(folder) / bug.id
    shutil.copytree(full / "minilora", copy / "minilora")
    apply(bug, copy / "minilora")
    return copy


def region_copy(full, folder, number, body, files=None):
    """A copy of the student copy ``full`` in ``folder``/submission whose first region of exercise ``number``
    holds ``body`` (dedented, then indented as the region), and with ``files`` ({relative path: text}) written."""
    import shutil
    import textwrap

    copy = Path(folder) / "submission"
    shutil.copytree(full / "minilora", copy / "minilora")
    for path in sorted((copy / "minilora").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        region = next((r for r in find_regions(text, path.name) if r.number == number), None) if "# BEGIN" in text else None
        if region is not None and "/assignment/" not in path.as_posix():
            lines = text.splitlines(keepends=True)
            lines[region.start_line:region.end_line - 1] = [textwrap.indent(textwrap.dedent(body), region.indent)]
            path.write_text("".join(lines), encoding="utf-8")
            break
    for relative, content in (files or {}).items():
        (copy / relative).write_text(content, encoding="utf-8")
    return copy
