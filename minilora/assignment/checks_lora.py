"""The checks of the LoRA exercises (20-23): lora_linear, merging, the trainable count, subspace similarity."""
import numpy as np

from .judging import Case, CustomCheck, GradientCheck, compare, compare_all, rng_for, submodule


# ---- 20. lora_linear forward and backward ---------------------------------------------------
def _lora_inputs(package, t, inputs):
    """(x, W0, b, A, B): the differentiable ones from ``t``, a frozen W0 (``W0_frozen``) as a constant Tensor."""
    W0 = t["W0"] if "W0" in t else package.Tensor(np.array(inputs["W0_frozen"]))
    return t["x"], W0, t.get("b"), t["A"], t["B"]


def _build_lora(package, t, inputs):
    mask = inputs.get("dropout_mask")
    return submodule(package, "lora").lora_linear(*_lora_inputs(package, t, inputs), inputs["scaling"], mask)


def _lora_cases():
    def case(name, N, k, d, r, scaling, train_W0=False, bias=True, mask=False):
        shapes = dict(x=N, A=(r, k), B=(d, r), **({"b": (d,)} if bias else {}))
        arrays = {key: rng_for(name, key).standard_normal(shape) for key, shape in shapes.items()}
        arrays["W0" if train_W0 else "W0_frozen"] = rng_for(name, "W0").standard_normal((d, k))
        if mask:
            arrays["dropout_mask"] = (rng_for(name, "mask").random(N) >= 0.5) / 0.5
        return Case(name, {**arrays, "scaling": scaling})
    return [case("x (5, 4), W0 (3, 4) frozen, r = 2, s = 2.0", (5, 4), 4, 3, 2, 2.0),
            case("batched x (2, 3, 4), W0 (6, 4) frozen, r = 1, s = 0.5, no bias", (2, 3, 4), 4, 6, 1, 0.5, bias=False),
            case("W0 (3, 5) trainable too, r = 3", (4, 5), 5, 3, 3, 1.5, train_W0=True),
            case("LoRA dropout: a keep-mask on x's low-rank path, r = 2", (4, 3), 3, 4, 2, 4.0, mask=True)]


def _lora_forward_property(case, arrays):
    """h = x W0^T + b + s (x_lora A^T) B^T, the definition, where x_lora = x * mask (LoRA dropout) or x."""
    h = case.inputs
    W0 = h["W0"] if "W0" in h else h["W0_frozen"]
    x_lora = h["x"] * h["dropout_mask"] if "dropout_mask" in h else h["x"]
    definition = h["x"] @ W0.T + h.get("b", 0) + h["scaling"] * (x_lora @ h["A"].T) @ h["B"].T
    message = compare("the output h", arrays["out"], definition)
    if message:
        return message + " (h = x W0^T + b + s (x A^T) B^T, the low-rank path seeing x * dropout_mask)"
    if arrays["dW0_formed"] != 0:
        return ("your backward computed dW0 although W0 is frozen (ctx.needs_input_grad[1] is False): "
                "LoRA never pays for that (d, k) product")
    return None


def _dW0_formed(package, case):
    """{"dW0_formed": 1 if LoRALinearFunction.backward returns a dW0 for a frozen W0, else 0}."""
    h = case.inputs
    x, A, B = (package.Tensor(np.array(h[name]), requires_grad=True) for name in ("x", "A", "B"))
    W0 = package.Tensor(np.array(h["W0"] if "W0" in h else h["W0_frozen"]))
    out = submodule(package, "lora").lora_linear(x, W0, None, A, B, h["scaling"], h.get("dropout_mask"))
    grads = out._fn.backward(out._ctx, np.ones(out.shape))
    return {"dW0_formed": np.float64(grads[1] is not None)}


# ---- 21. Merge and unmerge -------------------------------------------------------------------
def _merge_cases():
    def case(name, d, k, r, scaling):
        arrays = {key: rng_for(name, key).standard_normal(shape)
                  for key, shape in dict(W0=(d, k), b=(d,), A=(r, k), B=(d, r), x=(3, k)).items()}
        return Case(name, {**arrays, "scaling": scaling})
    return [case("W0 (4, 3), r = 2, s = 2.0", 4, 3, 2, 2.0), case("W0 (2, 5), r = 1, s = 0.25", 2, 5, 1, 0.25)]


def _run_merge(package, case):
    """The base weight after merge() and after unmerge(), and the merged layer's output on x."""
    h = case.inputs
    d, k = h["W0"].shape
    base = submodule(package, "nn").Linear(k, d)
    base.weight.data, base.bias.data = np.array(h["W0"]), np.array(h["b"])
    layer = submodule(package, "lora.layer").LoRALinear(base)
    layer.add_adapter("default", r=h["A"].shape[0], alpha=h["scaling"] * h["A"].shape[0], scaling=h["scaling"])
    layer.lora_A["default"].data, layer.lora_B["default"].data = np.array(h["A"]), np.array(h["B"])
    with package.no_grad():
        layer.merge()
        merged = np.array(package.to_numpy(base.weight.data), dtype=np.float64)
        out = package.to_numpy(layer(package.Tensor(np.array(h["x"]))).data).astype(np.float64)
        layer.unmerge()
    return {"merged_weight": merged, "merged_out": out,
            "unmerged_weight": np.array(package.to_numpy(base.weight.data), dtype=np.float64)}


def _merge_shapes(case):
    d, k = case.inputs["W0"].shape
    return {"merged_weight": (d, k), "merged_out": (len(case.inputs["x"]), d), "unmerged_weight": (d, k)}


def _judge_merge(case, arrays, expected):
    h = case.inputs
    merged = h["W0"] + h["scaling"] * h["B"] @ h["A"]  # the definition: W0 + s B A
    message = (compare("the weight after merge()", arrays["merged_weight"], merged)
               or compare("the merged layer's output", arrays["merged_out"], h["x"] @ merged.T + h["b"])
               or compare("the weight after unmerge() (it should be W0 again)", arrays["unmerged_weight"], h["W0"],
                          rtol=1e-12, atol=1e-12))
    if message:
        return message
    return compare_all(arrays, expected) if expected is not None else None


# ---- 22. Trainable parameters ----------------------------------------------------------------
def _count_cases():
    def case(name, n_layer, n_embd, r, targets, bias):
        return Case(name, {"n_layer": n_layer, "n_embd": n_embd, "r": r, "targets": targets, "bias": bias})
    return [case("LoRA r = 4 on q and v of a 2-layer GPT, d = 16", 2, 16, 4, ("q", "v"), "none"),
            case("LoRA r = 1 on q only of a 3-layer GPT, d = 8", 3, 8, 1, ("q",), "none"),
            case("LoRA r = 2 on q and v, bias 'lora_only'", 2, 8, 2, ("q", "v"), "lora_only"),
            case("LoRA r = 2 on q and v, bias 'all'", 1, 8, 2, ("q", "v"), "all")]


def _run_count(package, case):
    """count_parameters of a small GPT after get_peft_model, and every parameter's requires_grad (by sorted name)."""
    h = case.inputs
    gpt = submodule(package, "models.gpt")
    lora = submodule(package, "lora")
    model = gpt.GPT(gpt.GPTConfig(n_layer=h["n_layer"], n_head=2, n_embd=h["n_embd"], block_size=8, vocab_size=11))
    model = lora.get_peft_model(model, lora.LoraConfig(r=h["r"], lora_alpha=h["r"], target_modules=list(h["targets"]),
                                                       bias=h["bias"]))
    trainable, total = lora.count_parameters(model)
    flags = [p.requires_grad for _, p in sorted(model.named_parameters(), key=lambda item: item[0])]
    return {"trainable": np.float64(trainable), "total": np.float64(total), "requires_grad": np.array(flags, dtype=np.float64)}


def _count_shapes(case):
    return {"trainable": (), "total": (), "requires_grad": None}


def _judge_count(case, arrays, expected):
    h = case.inputs
    adapted = h["n_layer"] * len(h["targets"])  # L: the adapted d x d matrices
    formula = 2 * adapted * h["n_embd"] * h["r"] + (adapted * h["n_embd"] if h["bias"] == "lora_only" else 0)
    if h["bias"] != "all" and arrays["trainable"] != formula:
        return (f"count_parameters says {arrays['trainable']:.0f} trainable values; LoRA r = {h['r']} on {adapted} "
                f"matrices of {h['n_embd']} x {h['n_embd']} trains 2 L d r = {2 * adapted * h['n_embd'] * h['r']}"
                + (f" plus their {adapted * h['n_embd']} bias values" if h["bias"] == "lora_only" else "")
                + " (only each layer's A and B, and the biases that bias= names)")
    if arrays["total"] < arrays["trainable"]:
        return f"count_parameters says {arrays['total']:.0f} values in all but {arrays['trainable']:.0f} trainable"
    if expected is not None:
        return compare_all(arrays, expected, labels={"requires_grad": "which parameters require grad (by sorted name)",
                                                     "trainable": "the trainable count", "total": "the total count"})
    return None


# ---- 23. Subspace similarity -----------------------------------------------------------------
def _phi_cases():
    k = 6
    eye = np.eye(k)
    known = {"A1": np.diag([4.0, 3.0, 2.0, 1.0]) @ eye[[0, 1, 2, 3]], "A2": np.diag([3.0, 2.0, 1.0]) @ eye[[0, 2, 5]],
             "rows1": (0, 1, 2, 3), "rows2": (0, 2, 5)}
    A = rng_for("23", "A").standard_normal((3, 8))
    return [Case("known directions: A1's top rows e0..e3, A2's e0, e2, e5 (k = 6)", known),
            Case("the same row space: A2 = M A1, r = 3, k = 8",
                 {"A1": A, "A2": rng_for("23", "M").standard_normal((3, 3)) @ A, "relation": "same"}),
            Case("orthogonal row spaces, r1 = 2, r2 = 3, k = 5",
                 {"A1": np.eye(5)[:2] * 2, "A2": np.eye(5)[2:] + 0.0, "relation": "orthogonal"}),
            Case("random A1 (4, 10) and A2 (2, 10)", {"A1": rng_for("23", "A1").standard_normal((4, 10)),
                                                     "A2": rng_for("23", "A2").standard_normal((2, 10))})]


def _run_phi(package, case):
    """subspace_similarity(A1, A2) and (A2, A1): phi and its transpose."""
    analysis = submodule(package, "analysis")
    A1, A2 = np.array(case.inputs["A1"]), np.array(case.inputs["A2"])
    return {"phi": np.asarray(analysis.subspace_similarity(A1, A2), dtype=np.float64),
            "phi_swapped": np.asarray(analysis.subspace_similarity(A2, A1), dtype=np.float64)}


def _phi_shapes(case):
    r1, r2 = len(case.inputs["A1"]), len(case.inputs["A2"])
    return {"phi": (r1, r2), "phi_swapped": (r2, r1)}


def _phi_known(case):
    """phi where A1 and A2 are scaled basis vectors, so that U_i holds the first i of them: |shared| / min(i, j)."""
    rows1, rows2 = case.inputs.get("rows1"), case.inputs.get("rows2")
    if rows1 is None:
        return None
    return np.array([[len(set(rows1[:i]) & set(rows2[:j])) / min(i, j) for j in range(1, len(rows2) + 1)]
                     for i in range(1, len(rows1) + 1)])


def _judge_phi(case, arrays, expected):
    phi = arrays["phi"]
    if phi.min() < -1e-9 or phi.max() > 1 + 1e-9:
        return f"phi must lie in [0, 1]; yours ranges from {phi.min():.4g} to {phi.max():.4g} (divide by min(i, j))"
    message = compare("phi(A2, A1), which must be phi(A1, A2) transposed", arrays["phi_swapped"], phi.T)
    known = _phi_known(case)
    if message is None and known is not None:
        message = compare("phi", phi, known)
    if message is None and case.inputs.get("relation") == "orthogonal":
        message = compare("phi of orthogonal row spaces (all 0)", phi, np.zeros_like(phi), atol=1e-9)
    if message is None and case.inputs.get("relation") == "same":
        message = compare("phi(r, r) of the same row space (1)", phi[-1, -1], 1.0)
    if message is None and expected is not None:
        message = compare_all(arrays, expected, ("phi",))
    return message


CHECKS = {
    20: GradientCheck(_build_lora, ("x", "W0", "b", "A", "B"), _lora_cases, properties=_lora_forward_property,
                      extra=_dW0_formed, extra_shapes=lambda case: {"dW0_formed": ()}),
    21: CustomCheck(_merge_cases, _run_merge, _merge_shapes, _judge_merge),
    22: CustomCheck(_count_cases, _run_count, _count_shapes, _judge_count),
    23: CustomCheck(_phi_cases, _run_phi, _phi_shapes, _judge_phi),
}
