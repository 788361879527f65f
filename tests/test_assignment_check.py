"""The exercises' checks: the solution passes every one, a wrong solution fails, and ``minilora assignment check`` says why.

Each wrong variant below is a bug a student could write, patched into the
instructor's own package for the length of one test: the checks must catch it
with the instructor's values (what the grader does) and, where the exercise has
a gradient or a property to go by, without them too (what a student's
``minilora assignment check`` does).
"""
import importlib
import sys

import numpy as np
import pytest

import minilora
import minilora.analysis
import minilora.lora
from minilora import autograd, backend, optim
from minilora.assignment import checks
from minilora.assignment.exercises import EXERCISES, Region, exercise, find_regions, parse_numbers, solution_files
from minilora.functional import attention, elementwise, linalg, norm, reduce, shape
from minilora.lora import function as lora_function, layer as lora_layer

# the modules, which share their names with functions that their packages export
gradcheck, softmax, embedding = (importlib.import_module(f"minilora.{name}")
                                 for name in ("gradcheck", "functional.softmax", "functional.embedding"))
NUMBERS = [e.number for e in EXERCISES]


def outcomes(number, expected=None):
    """[(case, message or None)] for every case of ``number`` run on the (possibly patched) package."""
    results = []
    for i, case in enumerate(checks.cases(number)):
        try:
            actual = checks.run_case(minilora, number, case)
        except Exception as error:  # noqa: BLE001  a wrong variant may raise: that case fails
            results.append((case, f"raised {type(error).__name__}: {error}"))
            continue
        results.append((case, checks.judge(number, case, actual, None if expected is None else expected[i])))
    return results


def instructor_values(number):
    return [checks.run_case(minilora, number, case) for case in checks.cases(number)]


# ---- the registry and the fences -------------------------------------------------------------
def test_registry_is_in_course_order_with_at_least_16_exercises():
    assert NUMBERS == list(range(1, len(EXERCISES) + 1)) and len(EXERCISES) >= 16
    assert all(e.points > 0 and e.summary and e.hint for e in EXERCISES)
    assert {e.number for e in EXERCISES if e.worked} == {5, 10}


def test_every_exercise_has_fences_in_the_source():
    files = solution_files()
    assert sorted(files) == NUMBERS
    assert files[20] == ["minilora/lora/function.py"] and files[12] == ["minilora/functional/embedding.py",
                                                                         "minilora/functional/shape.py"]


def test_find_regions_reads_both_kinds():
    text = ('x = 1\n    # BEGIN SOLUTION 6 "Mul and Div backward"\n    return 1\n    # END SOLUTION 6\n'
            '# BEGIN EXERCISE 7 "Exp, Log, Tanh and Sigmoid backward"\nraise NotImplementedError\n# END EXERCISE 7\n')
    assert find_regions(text, "f.py") == [
        Region(6, "solution", 2, 4, "    return 1\n", "Mul and Div backward", "    "),
        Region(7, "exercise", 5, 7, "raise NotImplementedError\n", "Exp, Log, Tanh and Sigmoid backward", "")]


@pytest.mark.parametrize("text, error", ids=["unclosed", "unopened", "nested", "other number", "other word",
                                              "other title", "unknown exercise", "malformed"], argvalues=[
    ('# BEGIN SOLUTION 6 "Mul and Div backward"\nx\n', "f.py:1: BEGIN fence never closed"),
    ("x\n# END SOLUTION 6\n", "f.py:2: an END fence with no BEGIN"),
    ('# BEGIN SOLUTION 6 "Mul and Div backward"\n# BEGIN SOLUTION 7 "Exp, Log, Tanh and Sigmoid backward"\n',
     "f.py:2: a BEGIN fence inside the region opened at line 1"),
    ('# BEGIN SOLUTION 6 "Mul and Div backward"\n# END SOLUTION 7\n', "f.py:2: '# END SOLUTION 7' closes"),
    ('# BEGIN SOLUTION 6 "Mul and Div backward"\n# END EXERCISE 6\n', "f.py:2: '# END EXERCISE 6' closes"),
    ('# BEGIN SOLUTION 6 "Mul backward"\n', "f.py:1: fence title 'Mul backward' is not exercise 6's"),
    ('# BEGIN SOLUTION 99 "Nothing"\n', "there is no exercise 99"),
    ("# BEGIN SOLUTION six\n", "f.py:1: a malformed fence"),
])
def test_find_regions_names_the_file_and_line_of_a_bad_fence(text, error):
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace("'", "'")):
        find_regions(text, "f.py")


def test_exercise_numbers_parse_and_bad_ones_are_named():
    assert parse_numbers("1,3-5, 7") == (1, 3, 4, 5, 7)
    with pytest.raises(ValueError, match="there is no exercise 40; the exercises are numbered 1 to"):
        exercise(40)
    with pytest.raises(ValueError, match="cannot read 'x'"):
        parse_numbers("1,x")


# ---- the solution passes ---------------------------------------------------------------------
@pytest.mark.parametrize("number", NUMBERS)
def test_the_solution_passes_its_own_checks(number):
    expected = instructor_values(number)
    assert checks.cases(number), "every exercise has cases"
    assert [message for _, message in outcomes(number)] == [None] * len(expected)
    assert [message for _, message in outcomes(number, expected)] == [None] * len(expected)
    for values in expected:
        assert all(isinstance(v, np.ndarray) and v.dtype.kind in "fi" for v in values.values())


def test_run_case_is_numpy_whatever_the_environment_says(monkeypatch):
    """The assignments are a NumPy activity: MINILORA_BACKEND=cupy (here one whose CuPy cannot load) changes nothing."""
    monkeypatch.setattr(backend, "_pending_environment", ["cupy"])  # what `import minilora` leaves for MINILORA_BACKEND=cupy
    monkeypatch.setattr(backend, "_environment_error", [])
    monkeypatch.setattr(backend, "_state", dict(backend._state, name="numpy", xp=np))
    monkeypatch.setitem(sys.modules, "cupy", None)  # any import of CuPy from here on fails
    for number in (5, 7, 12):
        assert [message for _, message in outcomes(number)] == [None] * len(checks.cases(number))
    assert backend._pending_environment == ["cupy"]


@pytest.mark.skipif(backend.cupy_unavailable_reason() is not None, reason="needs a machine where CuPy runs")
def test_run_case_is_numpy_on_the_cupy_backend():
    expected = instructor_values(7)
    with backend.using_backend("cupy"):
        actual = [checks.run_case(minilora, 7, case) for case in checks.cases(7)]
        assert minilora.get_backend() == "cupy"
    for case, values, reference in zip(checks.cases(7), actual, expected):
        assert all(isinstance(v, np.ndarray) for v in values.values())
        assert checks.judge(7, case, values, reference) is None


def test_cases_are_deterministic():
    for number in NUMBERS:
        first, second = checks.cases(number), checks.cases(number)
        for a, b in zip(first, second):
            assert a.name == b.name and a.inputs.keys() == b.inputs.keys()
            assert all(np.array_equal(a.inputs[k], b.inputs[k]) for k in a.inputs)


def test_all_checks_run_in_well_under_two_seconds_each():
    import time
    for number in NUMBERS:
        start = time.perf_counter()
        instructor_values(number)
        assert time.perf_counter() - start < 1.0, number


@pytest.mark.parametrize("actual", [None, 3, {}, {"out": "text"}, {"out": np.array([np.nan])}, {"out": object()},
                                    {"grad:a": np.zeros((9, 9))}])
def test_judge_never_crashes_on_a_malformed_result(actual):
    for number in NUMBERS:
        case = checks.cases(number)[0]
        message = checks.judge(number, case, actual)
        assert isinstance(message, str) and message


# ---- wrong variants fail ---------------------------------------------------------------------
ORIGINAL = {"topological_order": autograd._topological_order, "numerical_gradient": gradcheck.numerical_gradient,
            "linear": linalg.Linear.backward, "layer_norm": norm.LayerNorm.backward,
            "cross_entropy": softmax.CrossEntropy.backward, "lora": lora_function.LoRALinearFunction.backward,
            "sum": reduce.Sum.backward}


def _wrong_backward_loop(self, grad=None, retain_graph=False):
    """The loop without accumulation: a tensor used twice keeps only its last gradient."""
    grads = {id(self): np.ones_like(self.data) if grad is None else backend.asarray(grad.data if hasattr(grad, "data") else grad)}
    for node in reversed(autograd._topological_order(self)):
        g = grads.pop(id(node), None)
        if g is None:
            continue
        if node._fn is None:
            node.grad = g.copy()
            continue
        input_grads = node._fn.backward(node._ctx, g)
        input_grads = input_grads if isinstance(input_grads, tuple) else (input_grads,)
        for parent, parent_grad in zip(node._parents, input_grads):
            if parent is not None and parent_grad is not None and parent.requires_grad:
                grads[id(parent)] = autograd.unbroadcast(parent_grad, parent.shape)


def _twice_the_difference(fn, inputs, which, cotangent, eps=1e-6):
    """Divides by eps where central differences divide by 2 eps."""
    return 2 * ORIGINAL["numerical_gradient"](fn, inputs, which, cotangent, eps)


def _ties_not_split(ctx, dy):
    return ctx.is_max * reduce._expand(dy, ctx.axes, ctx.keepdims)


def _getitem_drops_repeats(ctx, grad):
    dx = np.zeros(ctx.shape)
    dx[ctx.index] = grad
    return dx, None


def _embedding_drops_repeats(ctx, grad):
    dweight = np.zeros(ctx.shape)
    dweight[ctx.ids.reshape(-1)] = grad.reshape(-1, ctx.shape[1])
    return None, dweight


def _layer_norm_without_variance_term(ctx, dy):
    dx, dweight, dbias = ORIGINAL["layer_norm"](ctx, dy)
    dxhat = dy * ctx.weight if ctx.weight is not None else dy
    return dx + ctx.rstd * ctx.xhat * (dxhat * ctx.xhat).mean(axis=-1, keepdims=True), dweight, dbias


def _cross_entropy_mean_over_all_rows(ctx, dloss):
    dlogits, _ = ORIGINAL["cross_entropy"](ctx, dloss)
    return dlogits * (ctx.count / len(ctx.t) if ctx.reduction == "mean" else 1), None


def _sgd_without_buffer(self):
    for _, p in self._params_with_grad():
        p.data -= self.lr * (p.grad + self.weight_decay * p.data)


def _adamw_without_bias_correction(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    p -= lr * weight_decay * p
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    p -= lr * m / (np.sqrt(v) + eps)


def _clip_each_alone(params, max_norm):
    for p in params:
        p.grad *= min(1.0, max_norm / (np.linalg.norm(p.grad) + 1e-6))
    return np.sqrt(sum(np.sum(p.grad ** 2) for p in params))


def _lora_dB_without_scaling(ctx, dh):
    dx, dW0, db, dA, dB, _ = ORIGINAL["lora"](ctx, dh)
    return dx, dW0, db, dA, dB / ctx.scaling, None


def _merge_without_scaling(self):
    name = self.active_adapter
    self.base_layer.weight.data = self.base_layer.weight.data + self.lora_B[name].data @ self.lora_A[name].data
    self.merged_adapter = name


def _phi_not_normalised(A1, A2):
    U1, U2 = minilora.analysis.right_singular_vectors(A1), minilora.analysis.right_singular_vectors(A2)
    return ((U1.T @ U2) ** 2).cumsum(axis=0).cumsum(axis=1)


def _static(function):
    return staticmethod(function)


WRONG = {  # exercise -> [(what is wrong, object, attribute, replacement)]
    1: [("the reverse order", autograd, "_topological_order", lambda root: ORIGINAL["topological_order"](root)[::-1])],
    2: [("no sum over the stretched axes", autograd, "unbroadcast",
         lambda grad, shape: grad.sum(axis=tuple(range(grad.ndim - len(shape)))))],
    3: [("gradients overwritten, not added", minilora.Tensor, "backward", _wrong_backward_loop)],
    4: [("divided by eps, not 2 eps", gradcheck, "numerical_gradient", _twice_the_difference)],
    5: [("Add's db = -dy", elementwise.Add, "backward", _static(lambda ctx, dy: (dy, -dy)))],
    6: [("Mul's da = a dy", elementwise.Mul, "backward", _static(lambda ctx, dy: (dy * ctx.a, dy * ctx.a)))],
    7: [("tanh's dx = (1 - y) dy", elementwise.Tanh, "backward", _static(lambda ctx, dy: (1 - ctx.y) * dy))],
    8: [("1-D inputs not handled", linalg.MatMul, "backward",
         _static(lambda ctx, dy: (dy @ ctx.b.swapaxes(-1, -2), ctx.a.swapaxes(-1, -2) @ dy)))],
    9: [("db summed over the wrong axis", linalg.Linear, "backward",
         _static(lambda ctx, dy: ORIGINAL["linear"](ctx, dy)[:2] + (dy.reshape(-1, dy.shape[-1]).mean(0),)))],
    10: [("Mean's dx = dy, no 1/n", reduce.Mean, "backward", _static(lambda ctx, dy: ORIGINAL["sum"](ctx, dy)))],
    11: [("tied maxima each get all of dy", reduce.Max, "backward", _static(_ties_not_split))],
    12: [("repeated indices keep one gradient", shape.GetItem, "backward", _static(_getitem_drops_repeats)),
         ("embedding: repeated ids keep one row", embedding.Embedding, "backward", _static(_embedding_drops_repeats))],
    13: [("softmax's dx = y dy", softmax, "softmax_backward", lambda y, dy, axis: y * dy)],
    14: [("the mean over all rows, ignored ones too", softmax.CrossEntropy, "backward",
          _static(_cross_entropy_mean_over_all_rows))],
    15: [("the variance term dropped", norm.LayerNorm, "backward", _static(_layer_norm_without_variance_term))],
    16: [("the causal mask off by one", attention, "causal_mask",
          lambda xp, T, S: xp.tril(xp.ones((T, S), dtype=bool), k=S - T + 1))],
    17: [("no momentum buffer", optim.SGD, "step", _sgd_without_buffer)],
    18: [("no bias correction", optim, "adamw_update", _adamw_without_bias_correction)],
    19: [("each gradient clipped alone", optim, "clip_grad_norm", _clip_each_alone)],
    20: [("dB without the scaling s", lora_function.LoRALinearFunction, "backward", _static(_lora_dB_without_scaling))],
    21: [("merged without the scaling s", lora_layer.LoRALinear, "merge", _merge_without_scaling)],
    22: [("every parameter counted as trainable", minilora.lora, "count_parameters",
          lambda model: (sum(p.size for p in model.parameters()),) * 2)],
    23: [("not divided by min(i, j)", minilora.analysis, "subspace_similarity", _phi_not_normalised)],
}


def test_every_exercise_has_a_wrong_variant():
    assert sorted(WRONG) == NUMBERS


@pytest.mark.parametrize("number, wrong", [(n, w) for n, ws in WRONG.items() for w in ws],
                         ids=[f"{n}-{w[0]}" for n, ws in WRONG.items() for w in ws])
def test_a_wrong_solution_fails_its_checks(number, wrong, monkeypatch):
    what, owner, name, replacement = wrong
    expected = instructor_values(number)
    monkeypatch.setattr(owner, name, replacement)
    assert any(message for _, message in outcomes(number, expected)), f"exercise {number}: {what} passed the grader's checks"
    assert any(message for _, message in outcomes(number)), f"exercise {number}: {what} passed the student's checks"
