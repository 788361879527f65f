"""The checks of the op exercises (5-16): each a GradientCheck of one or a few Functions' backward.

Where an exercise has several ops, each op gets inputs of its own (``mul_a``,
``div_b``...), so a wrong gradient names the op it came from.
"""
import numpy as np

from .judging import Case, GradientCheck, cotangent, first_values, rng_for


def _arrays(label, **shapes):
    """{name: a float64 array of that shape}, random but fixed by ``label`` and the name."""
    return {name: rng_for(label, name).standard_normal(shape) for name, shape in shapes.items()}


def _positive(label, **shapes):
    return {name: 0.5 + rng_for(label, name).random(shape) for name, shape in shapes.items()}


def _flat(package, *tensors):
    """The outputs of several ops as one vector, so that one check covers them all."""
    return package.functional.concatenate([t.reshape(-1) for t in tensors])


def _case(name, smooth=True, **inputs):
    return Case(name, inputs, smooth)


# ---- 5. Add, Sub and Neg (worked) ------------------------------------------------------------
def _build_add_sub_neg(package, t, inputs):
    F = package.functional
    return _flat(package, F.add(t["add_a"], t["add_b"]), F.sub(t["sub_a"], t["sub_b"]), F.neg(t["neg_x"]))


def _cases_add_sub_neg():
    same = dict(add_a=(3, 4), add_b=(3, 4), sub_a=(3, 4), sub_b=(3, 4), neg_x=(3, 4))
    broadcast = dict(add_a=(2, 3), add_b=(3,), sub_a=(4, 1), sub_b=(1, 5), neg_x=(2,))
    return [_case("same shapes (3, 4)", **_arrays("5-same", **same)),
            _case("broadcasting: (2, 3) + (3,), (4, 1) - (1, 5)", **_arrays("5-broadcast", **broadcast))]


# ---- 6. Mul and Div --------------------------------------------------------------------------
def _build_mul_div(package, t, inputs):
    F = package.functional
    return _flat(package, F.mul(t["mul_a"], t["mul_b"]), F.div(t["div_a"], t["div_b"]))


def _cases_mul_div():
    def case(name, mul_a, mul_b, div_a, div_b):
        label = f"6-{name}"
        return _case(name, **_arrays(label, mul_a=mul_a, mul_b=mul_b, div_a=div_a),
                     **{"div_b": _positive(label, div_b=div_b)["div_b"] * np.sign(rng_for(label, "sign").standard_normal(div_b))})
    return [case("same shapes (3, 4)", (3, 4), (3, 4), (3, 4), (3, 4)),
            case("broadcasting: (3, 1) * (4,), (2, 3) / (3,)", (3, 1), (4,), (2, 3), (3,)),
            case("broadcasting: (4,) * (2, 1, 4), (1, 3) / (2, 1)", (4,), (2, 1, 4), (1, 3), (2, 1)),
            case("scalars: () * (3,), (3,) / ()", (), (3,), (3,), ())]


# ---- 7. Exp, Log, Tanh and Sigmoid ----------------------------------------------------------
def _build_pointwise(package, t, inputs):
    F = package.functional
    return _flat(package, F.exp(t["exp_x"]), F.log(t["log_x"]), F.tanh(t["tanh_x"]), F.sigmoid(t["sigmoid_x"]))


def _cases_pointwise():
    small = _case("shape (2, 3)", **_arrays("7-small", exp_x=(2, 3), tanh_x=(2, 3), sigmoid_x=(2, 3)),
                  **_positive("7-small", log_x=(2, 3)))
    wide = np.array([-30.0, -4.0, -0.5, 0.0, 0.7, 5.0, 30.0])
    saturated = _case("large and small values (7,)", exp_x=wide / 10, log_x=np.exp(wide / 10), tanh_x=wide, sigmoid_x=wide)
    return [small, saturated]


# ---- 8. MatMul -------------------------------------------------------------------------------
def _build_matmul(package, t, inputs):
    return package.functional.matmul(t["a"], t["b"])


def _cases_matmul():
    shapes = [("matrices (3, 4) @ (4, 2)", (3, 4), (4, 2)),
              ("a vector times a matrix (4,) @ (4, 2)", (4,), (4, 2)),
              ("a matrix times a vector (3, 4) @ (4,)", (3, 4), (4,)),
              ("two vectors (4,) @ (4,)", (4,), (4,)),
              ("batched (2, 3, 4) @ (2, 4, 5)", (2, 3, 4), (2, 4, 5)),
              ("batch axes that broadcast (2, 1, 3, 4) @ (3, 4, 2)", (2, 1, 3, 4), (3, 4, 2)),
              ("a batch times one matrix (2, 3, 4) @ (4, 2)", (2, 3, 4), (4, 2)),
              ("a vector times a batch (4,) @ (2, 4, 3)", (4,), (2, 4, 3))]
    return [_case(name, **_arrays(f"8-{name}", a=a, b=b)) for name, a, b in shapes]


# ---- 9. Linear -------------------------------------------------------------------------------
def _build_linear(package, t, inputs):
    return package.functional.linear(t["x"], t["weight"], t.get("bias"))


def _cases_linear():
    return [_case("x (5, 3), weight (4, 3), bias (4,)", **_arrays("9-2d", x=(5, 3), weight=(4, 3), bias=(4,))),
            _case("batched x (2, 3, 3), weight (2, 3), bias (2,)", **_arrays("9-3d", x=(2, 3, 3), weight=(2, 3), bias=(2,))),
            _case("no bias: x (4, 2), weight (3, 2)", **_arrays("9-nobias", x=(4, 2), weight=(3, 2))),
            _case("one row: x (1, 3), weight (1, 3), bias (1,)", **_arrays("9-row", x=(1, 3), weight=(1, 3), bias=(1,)))]


# ---- 10. Sum and Mean (worked) ---------------------------------------------------------------
def _build_sum_mean(package, t, inputs):
    F = package.functional
    return _flat(package, F.sum(t["sum_x"], inputs["axis"], inputs["keepdims"]),
                 F.mean(t["mean_x"], inputs["axis"], inputs["keepdims"]))


def _cases_sum_mean():
    return [_case("axis 1 of (3, 4)", axis=1, keepdims=False, **_arrays("10-a", sum_x=(3, 4), mean_x=(3, 4))),
            _case("axes (0, 2) of (2, 3, 4), keepdims", axis=(0, 2), keepdims=True,
                  **_arrays("10-b", sum_x=(2, 3, 4), mean_x=(2, 3, 4))),
            _case("every axis of (2, 3)", axis=(0, 1), keepdims=False, **_arrays("10-c", sum_x=(2, 3), mean_x=(2, 3)))]


# ---- 11. Max and Var -------------------------------------------------------------------------
def _build_max_var(package, t, inputs):
    F = package.functional
    outputs = [F.max(t["max_x"], inputs["axis"], inputs["keepdims"])]
    if "var_x" in t:
        outputs.append(F.var(t["var_x"], inputs["axis"], inputs["keepdims"], inputs["ddof"]))
    return _flat(package, *outputs)


def _ties_share_equally(case, arrays):
    """Tied maxima split the upstream gradient equally; everything else gets 0."""
    x, axis = case.inputs["max_x"], case.inputs["axis"]
    is_max = x == x.max(axis=axis, keepdims=True)
    dy = cotangent(case, arrays["out"].shape).reshape(x.max(axis=axis, keepdims=True).shape)
    share = is_max * dy / is_max.sum(axis=axis, keepdims=True)
    if not np.allclose(arrays["grad:max_x"], share, rtol=1e-9, atol=1e-12):
        return (f"the gradient of max_x is wrong where maxima tie: each of the k tied maxima should get 1/k of the "
                f"upstream gradient and the other values 0; yours {first_values(arrays['grad:max_x'], 6)}")
    return None


def _cases_max_var():
    ties = np.array([[1.0, 3.0, 3.0, 0.5], [2.0, 2.0, 2.0, 2.0], [-1.0, 4.0, 0.0, -2.0]])
    return [
        _case("distinct values, axis 1 of (3, 4), ddof 0", axis=1, keepdims=False, ddof=0,
              **_arrays("11-a", max_x=(3, 4), var_x=(3, 4))),
        _case("axes (0, 2) of (2, 3, 4), keepdims, ddof 1", axis=(0, 2), keepdims=True, ddof=1,
              **_arrays("11-b", max_x=(2, 3, 4), var_x=(2, 3, 4))),
        _case("tied maxima: rows with 2 and 4 equal maxima, axis 1", smooth=False, axis=1, keepdims=False, max_x=ties),
        _case("tied maxima over every axis", smooth=False, axis=(0, 1), keepdims=False, max_x=np.array([[5.0, 1.0], [5.0, 5.0]])),
    ]


# ---- 12. GetItem and Embedding ---------------------------------------------------------------
def _build_indexing(package, t, inputs):
    F = package.functional
    outputs = []
    if "x" in t:
        index = tuple(inputs[key] for key in ("index", "index2") if key in inputs)
        outputs.append(F.getitem(t["x"], index[0] if len(index) == 1 else index))
    if "weight" in t:
        outputs.append(F.embedding(inputs["ids"], t["weight"]))
    return _flat(package, *outputs)


def _cases_indexing():
    return [
        _case("x (5,)[[0, 2, 0, 0, 4]]: index 0 three times", index=np.array([0, 2, 0, 0, 4]), **_arrays("12-a", x=(5,))),
        _case("x (3, 4)[rows [0, 2, 0], cols [1, 1, 1]]: position (0, 1) twice", index=np.array([0, 2, 0]),
              index2=np.array([1, 1, 1]), **_arrays("12-b", x=(3, 4))),
        _case("x (4, 3)[[3, 3, 1]]: whole rows, row 3 twice", index=np.array([3, 3, 1]), **_arrays("12-c", x=(4, 3))),
        _case("embedding: ids (2, 3) with repeats into weight (4, 5)", ids=np.array([[1, 3, 1], [0, 1, 3]]),
              **_arrays("12-d", weight=(4, 5))),
        _case("embedding: one id five times", ids=np.array([2, 2, 2, 2, 2]), **_arrays("12-e", weight=(3, 2))),
    ]


# ---- 13. Softmax and log-softmax -------------------------------------------------------------
def _build_softmax(package, t, inputs):
    F = package.functional
    return _flat(package, F.softmax(t["softmax_x"], inputs["axis"]), F.log_softmax(t["log_softmax_x"], inputs["axis"]))


def _cases_softmax():
    large = 1000 + _arrays("13-c", x=(2, 3))["x"]
    return [_case("last axis of (3, 4)", axis=-1, **_arrays("13-a", softmax_x=(3, 4), log_softmax_x=(3, 4))),
            _case("axis 0 of (3, 2, 2)", axis=0, **_arrays("13-b", softmax_x=(3, 2, 2), log_softmax_x=(3, 2, 2))),
            _case("large values near 1000 (2, 3)", axis=-1, softmax_x=large, log_softmax_x=large),
            _case("a vector (5,)", axis=-1, **_arrays("13-d", softmax_x=(5,), log_softmax_x=(5,)))]


# ---- 14. Cross-entropy -----------------------------------------------------------------------
def _build_cross_entropy(package, t, inputs):
    return package.functional.cross_entropy(t["logits"], inputs["targets"], inputs["ignore_index"], inputs["reduction"])


def _cases_cross_entropy():
    targets = np.array([2, -100, 0, 2, 1])
    cases = [_case(f"logits (5, 3), one row ignored (-100), reduction {r!r}", targets=targets, ignore_index=-100,
                   reduction=r, **_arrays("14-a", logits=(5, 3))) for r in ("mean", "sum", "none")]
    return cases + [
        _case("logits (2, 3, 4), ignore_index=3 marks two rows", targets=np.array([[3, 0, 1], [2, 3, 3]]),
              ignore_index=3, reduction="mean", **_arrays("14-b", logits=(2, 3, 4))),
        _case("every row ignored", targets=np.array([-100, -100]), ignore_index=-100, reduction="mean",
              **_arrays("14-c", logits=(2, 3))),
        _case("no row ignored, large logits", targets=np.array([0, 1, 2]), ignore_index=-100, reduction="mean",
              logits=50 * _arrays("14-d", logits=(3, 3))["logits"]),
    ]


# ---- 15. LayerNorm ---------------------------------------------------------------------------
def _build_layer_norm(package, t, inputs):
    return package.functional.layer_norm(t["x"], t.get("weight"), t.get("bias"), inputs["eps"])


def _cases_layer_norm():
    shifted = _arrays("15-d", x=(3, 4), weight=(4,), bias=(4,))
    shifted["x"] = 100 + 0.1 * shifted["x"]
    return [_case("x (4, 5), weight and bias (5,)", eps=1e-5, **_arrays("15-a", x=(4, 5), weight=(5,), bias=(5,))),
            _case("x (2, 3, 4), weight and bias (4,)", eps=1e-5, **_arrays("15-b", x=(2, 3, 4), weight=(4,), bias=(4,))),
            _case("x (3, 6) without weight or bias, eps 0.1", eps=0.1, **_arrays("15-c", x=(3, 6))),
            _case("x (3, 4) near 100 with a small spread", eps=1e-5, **shifted)]


# ---- 16. Attention with the causal mask ------------------------------------------------------
def _build_attention(package, t, inputs):
    mask = inputs.get("attn_mask")
    return package.functional.scaled_dot_product_attention(t["q"], t["k"], t["v"], mask, inputs["is_causal"])


def _cases_attention():
    def case(name, T, S, causal, D=3, mask=None):
        shapes = dict(q=(1, 2, T, D), k=(1, 2, S, D), v=(1, 2, S, D))
        extra = {} if mask is None else {"attn_mask": mask}
        return _case(name, is_causal=causal, **extra, **_arrays(f"16-{name}", **shapes))
    padding = np.array([[[[True, True, False, True]]], [[[True, True, True, False]]]])  # (2, 1, 1, 4)
    padded = _case("a padding mask (2, 1, 1, 4), not causal", is_causal=False, attn_mask=padding,
                   **_arrays("16-pad", q=(2, 1, 3, 2), k=(2, 1, 4, 2), v=(2, 1, 4, 2)))
    return [case("causal, T = S = 4", 4, 4, True),
            case("causal, 2 queries at the end of 5 keys (a KV cache)", 2, 5, True),
            case("causal, one query", 1, 3, True),
            case("not causal, T = 3, S = 4", 3, 4, False),
            padded]


def _mask_shape(case):
    return case.inputs["q"].shape[-2], case.inputs["k"].shape[-2]  # (T, S)


def _causal_mask(package, case):
    if not case.inputs["is_causal"]:
        return {}
    return {"mask": package.functional.attention.causal_mask(np, *_mask_shape(case)).astype(np.float64)}


def _causal_mask_shape(case):
    return {"mask": _mask_shape(case)} if case.inputs["is_causal"] else {}


def _causal_mask_property(case, arrays):
    """causal_mask(T, S): query t sits at position S - T + t and sees exactly the keys 0 .. S - T + t."""
    if not case.inputs["is_causal"]:
        return None
    T, S = _mask_shape(case)
    visible = np.arange(S)[None, :] <= (S - T + np.arange(T))[:, None]  # (T, S)
    if not np.array_equal(arrays["mask"], visible):
        return (f"causal_mask(xp, T={T}, S={S}) is wrong: row t must be True for keys 0 .. S - T + t; "
                f"expected {visible.astype(int).tolist()}, yours {arrays['mask'].astype(int).tolist()}")
    return None


CHECKS = {
    5: GradientCheck(_build_add_sub_neg, ("add_a", "add_b", "sub_a", "sub_b", "neg_x"), _cases_add_sub_neg),
    6: GradientCheck(_build_mul_div, ("mul_a", "mul_b", "div_a", "div_b"), _cases_mul_div),
    7: GradientCheck(_build_pointwise, ("exp_x", "log_x", "tanh_x", "sigmoid_x"), _cases_pointwise),
    8: GradientCheck(_build_matmul, ("a", "b"), _cases_matmul),
    9: GradientCheck(_build_linear, ("x", "weight", "bias"), _cases_linear),
    10: GradientCheck(_build_sum_mean, ("sum_x", "mean_x"), _cases_sum_mean),
    11: GradientCheck(_build_max_var, ("max_x", "var_x"), _cases_max_var,
                      properties=lambda case, arrays: None if case.smooth else _ties_share_equally(case, arrays)),
    12: GradientCheck(_build_indexing, ("x", "weight"), _cases_indexing),
    13: GradientCheck(_build_softmax, ("softmax_x", "log_softmax_x"), _cases_softmax),
    14: GradientCheck(_build_cross_entropy, ("logits",), _cases_cross_entropy),
    15: GradientCheck(_build_layer_norm, ("x", "weight", "bias"), _cases_layer_norm),
    16: GradientCheck(_build_attention, ("q", "k", "v"), _cases_attention, properties=_causal_mask_property,
                        extra=_causal_mask, extra_shapes=_causal_mask_shape),
}
