"""Bad input gives a clear exception that names the values involved, never a wrong answer."""
import numpy as np
import pytest

import minilora
import minilora.functional as F
from minilora import GradcheckError, Tensor


def test_matmul_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"matmul: shapes \(4, 3\) and \(5, 2\) do not align \(3 != 5\)"):
        Tensor(np.ones((4, 3))) @ Tensor(np.ones((5, 2)))


def test_add_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\) and \(4,\) cannot be broadcast"):
        Tensor(np.ones((2, 3))) + Tensor(np.ones(4))


def test_linear_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"linear: input has 3 features"):
        F.linear(Tensor(np.ones((2, 3))), Tensor(np.ones((4, 5))))


def test_backward_on_non_scalar_needs_a_gradient():
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"shape \(3,\) needs an explicit gradient"):
        (x * 2).backward()


def test_requires_grad_on_integer_tensor():
    with pytest.raises(TypeError, match="requires_grad needs a floating-point tensor, got dtype int64"):
        Tensor([1, 2, 3], requires_grad=True)


def test_embedding_rejects_out_of_range_ids():
    weight = Tensor(np.ones((5, 2)), requires_grad=True)
    with pytest.raises(IndexError, match=r"embedding: ids \[-1, 7\] are outside \[0, 5\)"):
        F.embedding(np.array([0, 7, -1, 2]), weight)


def test_cross_entropy_rejects_out_of_range_targets():
    logits = Tensor(np.zeros((3, 4)), requires_grad=True)
    with pytest.raises(IndexError, match=r"cross_entropy: ids \[4\] are outside \[0, 4\)"):
        F.cross_entropy(logits, np.array([0, 4, 1]))
    assert F.cross_entropy(logits, np.array([0, -100, 1])).item() == pytest.approx(np.log(4))


def test_cross_entropy_rejects_mismatched_targets():
    with pytest.raises(ValueError, match=r"targets of shape \(2,\) do not match logits \(3, 4\)"):
        F.cross_entropy(Tensor(np.zeros((3, 4))), np.array([0, 1]))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the NaN is the point
def test_gradcheck_reports_a_nan():
    x = Tensor(np.array([0.5, -1.0]), dtype="float64", requires_grad=True)
    with pytest.raises(GradcheckError, match=r"output is nan \(NaN or inf\) at index \(1,\)"):
        minilora.gradcheck(F.log, x)
    # A NaN that appears only under the finite-difference step (sqrt just above 0) is caught too.
    y = Tensor(np.array([4.0, 1e-7]), dtype="float64", requires_grad=True)
    with pytest.raises(GradcheckError, match=r"NaN or inf at index \(1,\)"):
        minilora.gradcheck(F.sqrt, y, eps=1e-6)


def test_gradcheck_names_the_wrong_gradient():
    class WrongSquare(minilora.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.x = x
            return x * x

        @staticmethod
        def backward(ctx, grad):
            return ctx.x * grad  # the factor 2 is missing

    x = Tensor(np.array([1.0, 3.0]), requires_grad=True, dtype="float64")
    with pytest.raises(GradcheckError, match=r"input 0 .*worst at index \(1,\): analytic .*numeric .*relative error"):
        minilora.gradcheck(WrongSquare.apply, x)


def test_gradcheck_refuses_float32():
    with pytest.raises(TypeError, match="float64"):
        minilora.gradcheck(F.tanh, Tensor(np.ones(2, dtype=np.float32), requires_grad=True))


def test_pow_refuses_a_tensor_exponent():
    with pytest.raises(TypeError, match="exponent must be a Python number"):
        Tensor([2.0]) ** Tensor([3.0])


def test_reshape_and_reduce_errors_name_values():
    with pytest.raises(ValueError, match=r"cannot reshape \(2, 3\) \(6 values\) into \(4, 2\)"):
        Tensor(np.ones((2, 3))).reshape(4, 2)
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        Tensor(np.ones((2, 3))).sum(axis=2)


def test_attention_mask_with_an_empty_row():
    q = Tensor(np.ones((1, 1, 2, 2)))
    mask = np.array([[True, False], [False, False]])
    with pytest.raises(ValueError, match="can see no key"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=mask)


def test_dropout_probability_must_be_below_one():
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\), got 1.0"):
        F.dropout(Tensor(np.ones(3)), p=1.0)


def test_matmul_batch_axes_that_do_not_broadcast_are_named():
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3, 4, 5\) and \(4, 5, 6\) have batch axes \(2, 3\) and \(4,\) "
                                         r"that do not broadcast: 3 != 4 at batch axis -1"):
        Tensor(np.ones((2, 3, 4, 5))) @ Tensor(np.ones((4, 5, 6)))


def test_transpose_axis_out_of_range():
    with pytest.raises(ValueError, match=r"transpose: axis 5 is out of range for shape \(2, 3\) \(2 axes: -2 to 1\)"):
        F.transpose(Tensor(np.ones((2, 3))), 0, 5)
    with pytest.raises(ValueError, match=r"transpose: axis -3 is out of range"):
        Tensor(np.ones((2, 3))).transpose(-3, 0)


def test_permute_axes_out_of_range_or_repeated():
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"permute: axis 3 is out of range for shape \(2, 3\)"):
        x.permute(0, 3)
    with pytest.raises(ValueError, match=r"permute: axes \(0, 0\) are not a permutation of the 2 axes"):
        x.permute(0, 0)
    with pytest.raises(ValueError, match=r"permute: axes \(0,\) are not a permutation of the 2 axes"):
        x.permute(0)
    with pytest.raises(ValueError, match=r"permute: axis 0 is out of range for shape \(\) \(it has no axes\)"):
        Tensor(1.0).permute(0)  # was a ZeroDivisionError


def test_concatenate_needs_tensors_and_a_valid_axis():
    with pytest.raises(ValueError, match=r"concatenate: got no tensors .*Fix"):
        F.concatenate([])
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"concatenate: axis 2 is out of range for shape \(2, 3\)"):
        F.concatenate([x, x], axis=2)
    with pytest.raises(ValueError, match=r"concatenate: shapes \(2, 3\), \(3,\) have different numbers of axes \(2, 1\)"):
        F.concatenate([x, Tensor(np.ones(3))])


def test_split_sizes_and_axis_are_checked():
    x = Tensor(np.ones((2, 6)))
    with pytest.raises(ValueError, match=r"split: the piece size must be a positive integer, got 0"):
        F.split(x, 0)
    with pytest.raises(ValueError, match=r"split: the piece size must be a positive integer, got -2"):
        F.split(x, -2, axis=1)
    with pytest.raises(ValueError, match=r"split: sizes \[-1, 7\] must be integers >= 0"):
        F.split(x, [-1, 7], axis=1)
    with pytest.raises(ValueError, match=r"split: axis 2 is out of range for shape \(2, 6\)"):
        F.split(x, 1, axis=2)
    assert [p.shape for p in F.split(x, np.int64(4), axis=1)] == [(2, 4), (2, 2)]


def test_getitem_out_of_range_names_the_shape():
    with pytest.raises(IndexError, match=r"getitem: [Ii]ndex 5 is out of bounds for axis 0 with size 2 \(tensor of shape \(2, 3\)\)"):
        Tensor(np.ones((2, 3)))[5]


def test_where_shapes_that_do_not_broadcast():
    with pytest.raises(ValueError, match=r"where: condition, a and b have shapes \(2, 3\), \(2, 3\) and \(4,\) that cannot be broadcast"):
        F.where(np.ones((2, 3), dtype=bool), Tensor(np.ones((2, 3))), Tensor(np.ones(4)))


def test_mT_needs_two_axes():
    with pytest.raises(ValueError, match=r"mT: needs at least 2 axes, got shape \(3,\)"):
        Tensor(np.ones(3)).mT


def test_gpt_rejects_an_empty_sequence():
    from minilora.models import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=4, block_size=4, vocab_size=5))
    with pytest.raises(ValueError, match=r"GPT: idx has shape \(2, 0\): a sequence needs at least one token"):
        model(np.zeros((2, 0), dtype=np.int64))
