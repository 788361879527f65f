"""The checks of the engine exercises (1-4): topological order, unbroadcast, the backward loop, central differences.

They use only the worked ops (Add, Sub, Neg, Sum, Mean) and forwards, so that a
student can check them before doing any op's backward.
"""
import numpy as np

from .judging import (Case, CustomCheck, GradientCheck, compare, compare_all, directions, first_values, read_result,
                      rng_for, submodule)


# ---- 1. Topological order --------------------------------------------------------------------
def _graph_cases():
    """Graphs of additions: nodes 0 .. leaves-1 are leaves; node leaves + i adds the two nodes in adds[i]."""
    chain = np.stack([np.arange(3000), np.zeros(3000, dtype=int)], axis=1)  # node i + 1 = node i + x
    return [
        Case("a chain x -> a -> b", {"leaves": 1, "adds": np.array([[0, 0], [1, 1]]), "constants": ()}),
        Case("a diamond: x feeds a and b, a + b", {"leaves": 1, "adds": np.array([[0, 0], [0, 1], [1, 2]]), "constants": ()}),
        Case("a shared subexpression used three times", {
            "leaves": 2, "adds": np.array([[0, 1], [2, 2], [2, 3], [4, 2], [5, 3]]), "constants": ()}),
        Case("a constant leaf (requires_grad=False) is left out", {
            "leaves": 3, "adds": np.array([[0, 1], [3, 2], [4, 0]]), "constants": (1,)}),
        Case("a chain of 3000 additions (no recursion limit)", {"leaves": 1, "adds": chain, "constants": ()}),
    ]


def _build_graph(package, case):
    """The tensors of the case's graph, leaves first; the last one is the root."""
    count, constants = case.inputs["leaves"], case.inputs["constants"]
    nodes = [package.Tensor(np.ones(2), requires_grad=i not in constants) for i in range(count)]
    for a, b in case.inputs["adds"]:
        nodes.append(package.functional.add(nodes[a], nodes[b]))
    return nodes


def _run_order(package, case):
    """{"order": the node numbers in the order _topological_order(root) lists them}."""
    nodes = _build_graph(package, case)
    number = {id(node): i for i, node in enumerate(nodes)}
    order = submodule(package, "autograd")._topological_order(nodes[-1])
    return {"order": np.array([number.get(id(node), -1) for node in order], dtype=np.int64)}


def _judge_order(case, arrays, expected):
    """Any order that lists each wanted tensor once, after its inputs, is right: the instructor's is one of many."""
    order = [int(i) for i in arrays["order"]]
    count, adds, constants = case.inputs["leaves"], case.inputs["adds"], set(case.inputs["constants"])
    parents = {count + i: (int(a), int(b)) for i, (a, b) in enumerate(adds)}
    wanted, stack = set(), [count + len(adds) - 1]
    while stack:
        node = stack.pop()
        if node not in wanted and node not in constants:
            wanted.add(node)
            stack.extend(parents.get(node, ()))
    if len(order) != len(set(order)):
        return f"the order lists a tensor more than once: {len(order)} entries for {len(set(order))} tensors"
    if set(order) != wanted:
        missing, extra = sorted(wanted - set(order)), sorted(set(order) - wanted)
        return (f"the order should hold exactly the {len(wanted)} tensors that require grad and lead to the root; "
                f"missing {missing[:5]}, not wanted {extra[:5]} (a constant, or -1: a tensor not in the graph)")
    position = {node: i for i, node in enumerate(order)}
    for node, pair in parents.items():
        for parent in pair:
            if node in position and parent in position and position[parent] > position[node]:
                return f"tensor {node} comes before its input {parent}: every tensor must come after all of its inputs"
    return None


# ---- 2. unbroadcast --------------------------------------------------------------------------
def _unbroadcast_cases():
    shapes = [((3, 4), (3, 4)), ((2, 3), (3,)), ((4, 3), (1, 3)), ((2, 3, 4), (3, 1)), ((2, 3), ()),
              ((5, 1, 4), (1, 1, 4)), ((2, 1), (1,))]
    return [Case(f"grad {g} down to shape {s}", {"grad": rng_for("2", g, s).standard_normal(g), "shape": s})
            for g, s in shapes]


def _run_unbroadcast(package, case):
    grad = np.array(case.inputs["grad"])
    return {"out": np.asarray(submodule(package, "autograd").unbroadcast(grad, case.inputs["shape"]), dtype=np.float64)}


def _judge_unbroadcast(case, arrays, expected):
    grad, shape = case.inputs["grad"], tuple(case.inputs["shape"])
    if expected is not None:
        message = compare("unbroadcast's result", arrays["out"], expected["out"])
        if message:
            return message
    # The backward of broadcasting is its adjoint: sum(out * u) = sum(grad * broadcast(u)) for every u of shape.
    for u in directions(case, "grad", shape):
        adjoint = float(np.sum(grad * np.broadcast_to(u, grad.shape)))
        if not np.isclose(float(np.sum(arrays["out"] * u)), adjoint, rtol=1e-9, atol=1e-9):
            return (f"unbroadcast(grad of shape {grad.shape}, {shape}) = {first_values(arrays['out'])} is not the "
                    f"sum of grad over the broadcast axes")
    return None


# ---- 3. The backward loop --------------------------------------------------------------------
def _build_backward_graph(package, t, inputs):
    return (_build_reductions if inputs["graph"] == "reductions" else _build_shared)(package, t, inputs)


def _build_shared(package, t, inputs):
    """A graph where x and z = x + y are used several times, so gradients must add up."""
    F = package.functional
    z = F.add(t["x"], t["y"])
    w = F.sub(F.add(z, z), t["x"])  # z twice, x again
    return F.add(F.neg(w), F.add(F.add(z, w), t["x"]))


def _build_reductions(package, t, inputs):
    F = package.functional
    z = F.add(t["x"], t["y"])
    return F.add(F.sum(z, 1, True), F.mean(F.add(z, t["x"]), 1, True))


def _backward_cases():
    def case(name, graph, x, y):
        return Case(name, dict(graph=graph, x=rng_for(name, "x").standard_normal(x), y=rng_for(name, "y").standard_normal(y)))
    return [case("x and z = x + y used several times, (3, 2)", "shared", (3, 2), (3, 2)),
            case("the same with y (2,) broadcast against x (3, 2)", "shared", (3, 2), (2,)),
            case("sums and means of a shared z = x + y, (2, 4)", "reductions", (2, 4), (2, 4))]


class BackwardLoopCheck(GradientCheck):
    """The gradients of graphs with shared subexpressions, and: a second backward adds to the leaves' .grad."""

    def run(self, package, case):
        """GradientCheck's result, plus "once:x" and "twice:x": x.grad after one and two backward passes."""
        result = super().run(package, case)
        x = package.Tensor(np.array(case.inputs["x"]), requires_grad=True)
        y = package.Tensor(np.array(case.inputs["y"]), requires_grad=True)
        for key in ("once:x", "twice:x"):
            out = self.build(package, {"x": x, "y": y}, case.inputs)
            out.backward(package.Tensor(np.ones(out.shape)))
            result[key] = package.to_numpy(x.grad).astype(np.float64).copy()
        return result

    def judge(self, case, actual, expected=None):
        message = super().judge(case, actual, expected)
        if message:
            return message
        shape = np.shape(case.inputs["x"])
        arrays = read_result(actual, {"once:x": shape, "twice:x": shape})
        if isinstance(arrays, str):
            return arrays
        if expected is not None:
            message = compare_all(arrays, expected, ("once:x",), {"once:x": "x.grad after one backward"})
            if message:
                return message
        return compare("x.grad after a second backward (it must add to the first: +=)",
                       arrays["twice:x"], 2 * arrays["once:x"])


# ---- 4. Numerical gradient -------------------------------------------------------------------
def _numerical_cases():
    def case(name, x, y, which):
        label = f"4-{name}"
        return Case(name, {"x": rng_for(label, "x").standard_normal(x), "y": rng_for(label, "y").standard_normal(y),
                           "which": which})
    return [case("f = x^3 y, d/dx, x and y (3,)", (3,), (3,), 0),
            case("f = x^3 y, d/dy, x and y (2, 3)", (2, 3), (2, 3), 1),
            case("f = x^3 y, d/dy, y (3,) broadcast against x (2, 3)", (2, 3), (3,), 1),
            case("f = x^3 y, d/dx, x (1,)", (1,), (1,), 0)]


def _cube_times(package):
    F = package.functional
    return lambda x, y: F.mul(F.pow(x, 3), y)


def _run_numerical(package, case):
    """numerical_gradient of sum(c * x^3 y) with respect to input ``which``, and the inputs afterwards."""
    x = package.Tensor(np.array(case.inputs["x"]))
    y = package.Tensor(np.array(case.inputs["y"]))
    c = _numerical_cotangent(case)
    gradient = submodule(package, "gradcheck").numerical_gradient(_cube_times(package), [x, y], case.inputs["which"], c, eps=1e-6)
    return {"gradient": np.asarray(gradient, dtype=np.float64),
            "x_after": package.to_numpy(x.data).astype(np.float64), "y_after": package.to_numpy(y.data).astype(np.float64)}


def _numerical_cotangent(case):
    shape = np.broadcast_shapes(np.shape(case.inputs["x"]), np.shape(case.inputs["y"]))
    return rng_for(case.name, "cotangent").standard_normal(shape)


def _numerical_shapes(case):
    which = ("x", "y")[case.inputs["which"]]
    return {"gradient": np.shape(case.inputs[which]), "x_after": np.shape(case.inputs["x"]),
            "y_after": np.shape(case.inputs["y"])}


def _judge_numerical(case, arrays, expected):
    x, y, c = case.inputs["x"], case.inputs["y"], _numerical_cotangent(case)
    for name in ("x", "y"):
        if not np.array_equal(arrays[f"{name}_after"], case.inputs[name]):
            return f"numerical_gradient changed input {name}: put every value back after nudging it"
    # d/dx sum(c x^3 y) = 3 x^2 y c;  d/dy = x^3 c, summed over the axes along which y was broadcast
    exact = 3 * x ** 2 * y * c if case.inputs["which"] == 0 else x ** 3 * c
    exact = exact.reshape(-1, *np.shape(y)).sum(axis=0) if case.inputs["which"] == 1 and exact.shape != np.shape(y) else exact
    message = compare("the numerical gradient", arrays["gradient"], exact, rtol=1e-6, atol=1e-7)
    if message:
        return message + " (the exact gradient is 3 x^2 y c for x and x^3 c for y)"
    return compare_all(arrays, expected, ("gradient",)) if expected is not None else None


CHECKS = {
    1: CustomCheck(_graph_cases, _run_order, lambda case: {"order": None}, _judge_order),
    2: CustomCheck(_unbroadcast_cases, _run_unbroadcast, lambda case: {"out": tuple(case.inputs["shape"])},
                   _judge_unbroadcast),
    3: BackwardLoopCheck(_build_backward_graph, ("x", "y"), _backward_cases),
    4: CustomCheck(_numerical_cases, _run_numerical, _numerical_shapes, _judge_numerical),
}
