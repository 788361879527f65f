"""The switch between the two paths: minilora.reference_ops() and MINILORA_REFERENCE_OPS=1 run every reference op.

The proof that it reaches every op: every reference Function's backward is
replaced by one that raises, and then every case of the op catalogue must
raise under the switch, on the current backend (run the suite with
MINILORA_BACKEND=cupy to check the GPU's fast kernels too).
"""
import contextlib
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minilora
import minilora.functional as F
from minilora import Function, backend, reference_ops
from minilora.functional.attention import ScaledDotProductAttention
from minilora.functional.elementwise import GeluTanh
from minilora.testing import as_tensor, assert_gradcheck

from conftest import require_oracle
from op_catalogue import CATALOGUE


class ReferenceBackwardRan(Exception):
    pass


def reference_functions():
    """Every Function subclass defined in minilora.functional or minilora.lora.function (the reference ops)."""
    import minilora.lora.function  # noqa: F401  (defines LoRALinearFunction)

    found, todo = [], list(Function.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith(("minilora.functional.", "minilora.lora.function")):
            found.append(cls)
    return found


@contextlib.contextmanager
def raising_reference_backwards():
    """Inside the block, every reference Function's backward raises ReferenceBackwardRan."""
    def raising(ctx, grad):
        raise ReferenceBackwardRan

    functions = reference_functions()
    assert len(functions) >= 30, [f.__name__ for f in functions]
    with pytest.MonkeyPatch.context() as patch:
        for cls in functions:
            patch.setattr(cls, "backward", staticmethod(raising))
        yield


def run_backward(out):
    out.backward(backend.asarray(np.ones(out.shape), like=out.data))


def run_case(case, arrays, const):
    inputs = [as_tensor(a) for a in arrays]
    out = case.minilora(*inputs, **const)
    assume(not out.is_leaf)  # x.T of a vector is x itself: no op ran
    run_backward(out)


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda case: case.label)
@settings(max_examples=3)
@given(data=st.data())
def test_under_the_switch_every_op_runs_its_reference_backward(case, data):
    arrays, const = data.draw(case.inputs)
    with raising_reference_backwards(), reference_ops(), pytest.raises(ReferenceBackwardRan):
        run_case(case, arrays, const)


def test_without_the_switch_numpy_runs_the_fast_backwards():
    """The other half of the proof, on the CPU: its two in-place variants run unless the switch is on."""
    rng = np.random.default_rng(0)
    with backend.using_backend("numpy"), raising_reference_backwards(), reference_ops(False):
        x = as_tensor(rng.standard_normal((2, 1, 4, 8)))
        for op in (lambda x: F.gelu(x, approximate="tanh"), lambda x: F.scaled_dot_product_attention(x, x, x, is_causal=True)):
            run_backward(op(x))  # the variants' own backwards: no ReferenceBackwardRan
            with reference_ops(), pytest.raises(ReferenceBackwardRan):
                run_backward(op(x))


@pytest.mark.gpu
def test_without_the_switch_the_gpu_runs_the_fast_backwards():
    """The other half of the proof: the patched references are what the switch brings back, not what runs anyway."""
    rng = np.random.default_rng(0)
    with backend.using_backend("cupy"), raising_reference_backwards(), reference_ops(False):
        x = as_tensor(rng.standard_normal((4, 8)))
        for op in (F.softmax, lambda x: F.gelu(x, approximate="tanh"), lambda x: F.layer_norm(x)):
            run_backward(op(x))  # the fused kernels' backwards: no ReferenceBackwardRan
            with reference_ops(), pytest.raises(ReferenceBackwardRan):
                run_backward(op(x))


def test_reference_ops_restores_the_previous_setting():
    before = minilora.is_reference_ops()
    with reference_ops():
        assert minilora.is_reference_ops()
        with reference_ops(False):
            assert not minilora.is_reference_ops()
        assert minilora.is_reference_ops()
    assert minilora.is_reference_ops() == before


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False), ("", False)])
def test_the_environment_variable_turns_the_switch_on_for_the_process(value, expected):
    env = dict(os.environ, MINILORA_REFERENCE_OPS=value)
    code = "import minilora; print(minilora.is_reference_ops())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(expected)


# The catalogue's own run (test_catalogue.py) reaches the NumPy variants where they exist; their references
# are checked here as well, so that both paths are gradient-checked and compared with PyTorch in every run.
REFERENCES_BEHIND_A_NUMPY_VARIANT = {"gelu_tanh": GeluTanh, "attention": ScaledDotProductAttention}


def test_every_numpy_variant_has_its_reference_checked_here():
    from minilora.fused import CPU

    assert set(CPU) == set(REFERENCES_BEHIND_A_NUMPY_VARIANT.values())


@pytest.mark.oracle
@pytest.mark.parametrize("case", [c for c in CATALOGUE if c.label in REFERENCES_BEHIND_A_NUMPY_VARIANT], ids=lambda c: c.label)
@settings(max_examples=20)
@given(data=st.data())
def test_references_behind_a_numpy_variant_pass_gradcheck_and_match_pytorch(case, data):
    torch = require_oracle("torch")
    arrays, const = data.draw(case.inputs)
    with reference_ops():
        assert_gradcheck(lambda *tensors: case.minilora(*tensors, **const), *arrays)
        ours = [as_tensor(a) for a in arrays]
        out = case.minilora(*ours, **const)
        assert out._fn is REFERENCES_BEHIND_A_NUMPY_VARIANT[case.label]
    theirs = [torch.from_numpy(np.array(a)).requires_grad_(True) for a in arrays]
    expected = case.torch(torch, *theirs, **const)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-9, atol=case.atol)
    cotangent = np.random.default_rng(0).standard_normal(out.shape)
    out.backward(backend.asarray(cotangent, like=out.data))
    expected.backward(torch.from_numpy(cotangent))
    for mine, reference in zip(ours, theirs):
        np.testing.assert_allclose(backend.to_numpy(mine.grad), reference.grad.numpy(), rtol=1e-9, atol=case.atol)


def github_anchor(heading):
    """The anchor GitHub (and mkdocs' toc) gives a markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("function", reference_functions(), ids=lambda f: f.__name__)
def test_every_reference_function_documents_its_shapes_ctx_and_derivation(function):
    doc = function.__doc__ or ""
    assert all(word in doc for word in ("Input", "Output", "ctx keeps")), f"{function.__name__}: give inputs, outputs and ctx"
    links = re.findall(r"(docs/[\w.]+\.md)#([\w-]+)", doc)
    assert links, f"{function.__name__}: link the section of docs/derivations.md (or lora.md) it implements"
    root = pathlib.Path(__file__).resolve().parent.parent
    for path, anchor in links:
        headings = re.findall(r"^#+ (.+)$", (root / path).read_text(encoding="utf-8"), flags=re.M)
        assert anchor in {github_anchor(h) for h in headings}, f"{function.__name__}: {path} has no section #{anchor}"
