"""What every exercise's check shares: the Case, reading a result safely, and comparing in words.

A check runs a package's code on a Case and gets back a dict of plain NumPy
arrays (its "result"); a judge reads a result and says, in words a student
understands, what is wrong with it, or None. Nothing here imports minilora: the
package under test is always passed in, so the same code checks a student's
copy, a submission in a grading process, or the instructor's own package.

The gradient checks (``GradientCheck``) compare a backward with the package's
own forward: for a few random directions u, the backward's gradient g must
predict how L = sum(cotangent * f(x)) changes along u,

    sum(g * u)  ~  (L(x + eps u) - L(x - eps u)) / (2 eps)

which is the numerical gradient along u (central differences). With the
instructor's result at hand (``expected``), every value is compared as well.
"""
import dataclasses
import importlib
import zlib

import numpy as np

EPS = 1e-5  # the step of the central differences, in float64
DIRECTIONS = 3  # random directions per input for the numerical check
RTOL, ATOL = 1e-6, 1e-9  # agreement with the instructor's values (same math, other rounding)
NUMERIC_TOL = 1e-6  # |analytic - numeric| <= NUMERIC_TOL * (1 + |analytic| + |numeric|)


@dataclasses.dataclass(frozen=True)
class Case:
    """One input of an exercise's checks.

    name: what a student reads ("broadcast (3, 1) * (4,)"). inputs: numbers,
    tuples, short strings and small float64 (or integer) NumPy arrays, keyed by name.
    smooth: False where the function has a kink at the input (tied maxima), so
    that only the instructor's values judge the gradient there, not central differences.
    """

    name: str
    inputs: dict
    smooth: bool = True


def submodule(package, name):
    """``package``'s submodule ``name`` ("optim", "lora.layer"), imported from that package, whichever it is."""
    return importlib.import_module(f"{package.__name__}.{name}")


def rng_for(*labels):
    """A NumPy Generator seeded by the labels' text: the same numbers in every process."""
    return np.random.default_rng(zlib.crc32("/".join(map(str, labels)).encode()))


def shape_of(value):
    return tuple(np.shape(value))


def describe_inputs(case):
    """'a (3, 1), b (4,), axis=1': the case's arrays by shape, its other inputs by value."""
    parts = []
    for name, value in case.inputs.items():
        parts.append(f"{name} {shape_of(value)}" if isinstance(value, np.ndarray) else f"{name}={value!r}")
    return ", ".join(parts)


def first_values(array, count=4):
    flat = np.asarray(array, dtype=np.float64).reshape(-1)
    shown = np.array2string(flat[:count], precision=4, separator=", ", suppress_small=True)
    return shown[:-1] + ", ...]" if flat.size > count else shown


def relative_error(actual, expected):
    """max |actual - expected| / max |expected| (or the absolute error where expected is all 0)."""
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-12)
    return float(np.max(np.abs(actual - expected), initial=0.0)) / scale


def compare(what, actual, expected, rtol=RTOL, atol=ATOL):
    """None if ``actual`` matches ``expected`` (shape and values), else a sentence saying how it differs."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return f"{what} has shape {actual.shape}, expected {expected.shape}"
    if np.allclose(actual, expected, rtol=rtol, atol=atol):
        return None
    message = (f"{what} is wrong: expected {first_values(expected)}, yours {first_values(actual)} "
               f"(max relative error {relative_error(actual, expected):.3g}")
    if actual.ndim:
        worst = tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(actual - expected)), actual.shape))
        message += f"; worst at index {worst}: expected {expected[worst]:.6g}, yours {actual[worst]:.6g}"
    return message + ")"


def read_result(actual, shapes):
    """The arrays of ``actual`` named in ``shapes`` ({key: shape, or None for any}), or a message saying what is wrong.

    A result comes from code a student wrote: it may miss keys, hold objects, the
    wrong shape, or NaN. Nothing of it is trusted before this check.
    """
    if not isinstance(actual, dict):
        return f"the check produced {type(actual).__name__}, not a dict of arrays"
    arrays = {}
    for key, shape in shapes.items():
        if key not in actual:
            return _missing(key)
        try:
            value = np.asarray(actual[key])
        except Exception:  # noqa: BLE001  any object a submission returned
            return f"{key} is not an array"
        if value.dtype.kind not in "fiub":
            return f"{key} holds {value.dtype} values, not numbers"
        value = value.astype(np.float64)
        if shape is not None and value.shape != tuple(shape):
            return f"{_label(key)} has shape {value.shape}, expected {tuple(shape)}"
        if not np.all(np.isfinite(value)):
            return f"{_label(key)} contains NaN or inf: {first_values(value)}"
        arrays[key] = value
    return arrays


def _label(key):
    kind, _, name = key.partition(":")
    return {"grad": f"the gradient of {name}", "out": "the output"}.get(kind, key)


def _missing(key):
    kind, _, name = key.partition(":")
    if kind == "grad":
        return (f"no gradient reached {name}: your backward returned None for it "
                "(check ctx.needs_input_grad and the order of the returned gradients)")
    return f"the result has no {key!r}"


def directions(case, name, shape):
    """The random unit-variance directions (DIRECTIONS, *shape) of the numerical check of input ``name``."""
    return rng_for(case.name, name, "directions").standard_normal((DIRECTIONS, *shape))


def cotangent(case, shape):
    """The fixed random upstream gradient dL/d(output) of ``case``, of the output's ``shape``."""
    return rng_for(case.name, "cotangent").standard_normal(shape)


def numeric_message(name, analytic, numeric):
    """None if the backward's directional derivatives match central differences of the forward, else a sentence."""
    error = np.abs(analytic - numeric)
    if np.all(error <= NUMERIC_TOL * (1 + np.abs(analytic) + np.abs(numeric))):
        return None
    return (f"the gradient of {name} disagrees with the numerical gradient of your own forward: along "
            f"{len(analytic)} random directions your backward predicts changes {first_values(analytic)}, "
            f"central differences give {first_values(numeric)} "
            f"(max relative error {relative_error(analytic, numeric):.3g})")


class GradientCheck:
    """Checks an op's backward: the output, each input's gradient, and the numerical gradient.

    build(package, tensors, inputs) -> Tensor: runs the op(s) under test on
    ``tensors`` (a Tensor with requires_grad per name in ``wrt`` that the case
    has) and the case's other ``inputs``. make_cases() -> [Case].
    extra(package, case) -> {key: array}: more values to grade (attention's causal
    mask), whose shapes extra_shapes(case) gives. properties(case, arrays) -> message
    or None: checks of a result that need no instructor values (how tied maxima
    share a gradient, which keys the causal mask hides).
    """

    def __init__(self, build, wrt, make_cases, properties=None, extra=None, extra_shapes=None):
        self.build, self.wrt, self.make_cases, self.properties = build, wrt, make_cases, properties
        self.extra, self.extra_shapes = extra, extra_shapes

    def cases(self):
        return self.make_cases()

    def leaves(self, case):
        return [name for name in self.wrt if name in case.inputs]

    def run(self, package, case):
        """{"out", "grad:<name>", "plus:<name>", "minus:<name>"}: the forward, the gradients, L(x ± eps u)."""
        tensors = {name: package.Tensor(np.array(case.inputs[name], dtype=np.float64), requires_grad=True)
                   for name in self.leaves(case)}
        out = self.build(package, tensors, case.inputs)
        result = {"out": package.to_numpy(out.data).astype(np.float64)}
        if self.extra:
            result.update(self.extra(package, case))
        dy = cotangent(case, out.shape)
        out.backward(package.Tensor(dy))
        for name, tensor in tensors.items():
            if tensor.grad is not None:
                result[f"grad:{name}"] = package.to_numpy(tensor.grad).astype(np.float64)
            result[f"plus:{name}"], result[f"minus:{name}"] = self._objectives(package, case, tensors, name, dy)
        return result

    def _objectives(self, package, case, tensors, name, dy):
        """L(x + eps u) and L(x - eps u) for each direction u of input ``name``, L = sum(dy * f)."""
        base = tensors[name].data
        values = {+1: [], -1: []}
        with package.no_grad():
            for u in directions(case, name, base.shape):
                for sign in (+1, -1):
                    moved = dict(tensors, **{name: package.Tensor(base + sign * EPS * u)})
                    values[sign].append(float(np.sum(dy * package.to_numpy(self.build(package, moved, case.inputs).data))))
        return np.array(values[+1]), np.array(values[-1])

    def judge(self, case, actual, expected=None):
        names = self.leaves(case)
        shapes = {"out": None if expected is None else np.shape(expected.get("out"))}
        for name in names:
            shapes.update({f"grad:{name}": shape_of(case.inputs[name]),
                           f"plus:{name}": (DIRECTIONS,), f"minus:{name}": (DIRECTIONS,)})
        extras = self.extra_shapes(case) if self.extra_shapes else {}
        arrays = read_result(actual, {**shapes, **extras})
        if isinstance(arrays, str):
            return arrays
        if expected is not None:
            for key in ["out", *extras] + [f"grad:{name}" for name in names]:
                message = compare(_label(key), arrays[key], np.asarray(expected[key], dtype=np.float64))
                if message:
                    return message
        if self.properties:
            message = self.properties(case, arrays)
            if message:
                return message
        if case.smooth:
            for name in names:
                u = directions(case, name, shape_of(case.inputs[name]))
                analytic = np.tensordot(u, arrays[f"grad:{name}"], axes=u.ndim - 1)
                numeric = (arrays[f"plus:{name}"] - arrays[f"minus:{name}"]) / (2 * EPS)
                message = numeric_message(name, analytic, numeric)
                if message:
                    return message
        return None


class CustomCheck:
    """A check written as three functions: make_cases() -> [Case], run(package, case) -> result,
    judge(case, arrays, expected) -> message or None, where ``arrays`` is the result already read
    with ``shapes(case)`` ({key: shape or None}) and ``expected`` the instructor's arrays or None."""

    def __init__(self, make_cases, run, shapes, judge):
        self.make_cases, self.run, self.shapes, self._judge = make_cases, run, shapes, judge

    def cases(self):
        return self.make_cases()

    def judge(self, case, actual, expected=None):
        arrays = read_result(actual, self.shapes(case))
        if isinstance(arrays, str):
            return arrays
        if expected is not None:
            expected = {key: np.asarray(value, dtype=np.float64) for key, value in expected.items()}
        return self._judge(case, arrays, expected)


def compare_all(arrays, expected, keys=None, labels=None):
    """The first difference between ``arrays`` and ``expected`` over ``keys`` (default: all of expected's), or None."""
    labels = labels or {}
    for key in keys or expected:
        message = compare(labels.get(key, key), arrays[key], expected[key])
        if message:
            return message
    return None
