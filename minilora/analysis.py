"""The paper's Section 7 tools, and what LoRA saves per layer.

subspace_similarity   how much two adapters' A matrices share the same input directions
random_subspace_similarity   the same for two random Gaussian matrices: the chance level
amplification         how strongly ΔW boosts directions that W0 already has
projection_norms      Table 7: how much of W lies in ΔW's, W's own and random top directions
linear_layer_costs    FLOPs and memory of one d x k layer: full fine-tuning against LoRA

All functions take arrays of either backend (or Tensors) and compute on the
host in float64: these are analysis numbers, not part of training.
"""
import numpy as np

from . import backend
from .autograd import Tensor


def _host64(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a).astype(np.float64)


def right_singular_vectors(A):
    """A (r, k) -> U (k, r): the right-singular vectors as columns, by falling singular value."""
    _, _, Vh = np.linalg.svd(_host64(A), full_matrices=False)
    return Vh.T


def subspace_similarity(A1, A2):
    """φ over the whole grid: phi[i-1, j-1] = ‖U1_iᵀ U2_j‖_F² / min(i, j), for A1 (r1, k), A2 (r2, k).

    U_i holds the top-i right-singular vectors of A (columns in R^k, the input
    space). φ is 1 when one top subspace contains the other and 0 when they are
    orthogonal. The paper's main text says "right-singular"; Appendix G says
    "left". For A (r x k) only the right ones live in a space that adapters of
    different ranks share (R^k; the left ones live in R^r), so we use those.
    Returns an (r1, r2) array.
    """
    U1, U2 = right_singular_vectors(A1), right_singular_vectors(A2)
    if U1.shape[0] != U2.shape[0]:
        raise ValueError(f"subspace_similarity: A1 {np.shape(A1)} and A2 {np.shape(A2)} need the same input size k (r, k)")
    # BEGIN SOLUTION 23 "Subspace similarity"
    overlap = (U1.T @ U2) ** 2  # (r1, r2): squared cosines between single directions
    cumulative = overlap.cumsum(axis=0).cumsum(axis=1)  # [i-1, j-1] = ‖U1_iᵀ U2_j‖_F²
    i = np.arange(1, U1.shape[1] + 1)[:, None]
    j = np.arange(1, U2.shape[1] + 1)[None, :]
    return cumulative / np.minimum(i, j)
    # END SOLUTION 23


def phi(A1, A2, i, j):
    """φ(A1, A2, i, j) for one 1 <= i <= r1, 1 <= j <= r2 (see subspace_similarity)."""
    grid = subspace_similarity(A1, A2)
    if not (1 <= i <= grid.shape[0] and 1 <= j <= grid.shape[1]):
        raise ValueError(f"phi: need 1 <= i <= {grid.shape[0]} and 1 <= j <= {grid.shape[1]}, got i={i}, j={j}")
    return float(grid[i - 1, j - 1])


def random_subspace_similarity(r1, r2, k, rng=None):
    """subspace_similarity of two random Gaussian matrices (r1, k) and (r2, k): the chance level.

    Two random subspaces of R^k of dimensions i <= j overlap by E ‖U1_iᵀ U2_j‖_F² = i j / k
    (each of U1_i's unit vectors keeps j / k of its squared length in U2_j), so
    E φ(i, j) = max(i, j) / k. An overlap of learned adapters means something only above this.
    """
    rng = np.random.default_rng(rng)
    return subspace_similarity(rng.standard_normal((r1, k)), rng.standard_normal((r2, k)))


def amplification(delta_w, W, r):
    """How much ΔW (d, k) amplifies directions of W (d, k): the paper's Table 7.

    U (d, r), V (r, k): the top-r left and right singular vectors of ΔW.
    projection = ‖Uᵀ W Vᵀ‖_F: how much of W lies in ΔW's directions.
    factor = ‖ΔW‖_F / projection (21.5 for GPT-3's Wq at r = 4).
    Returns {"delta_norm", "projection_norm", "factor"}.

        layer = model.model.blocks[0].attn.q   # a LoRALinear, not merged
        amplification(layer.delta_weight("default"), layer.base_layer.weight, layer.r["default"])
    """
    delta_w, W = _host64(delta_w), _host64(W)
    if delta_w.shape != W.shape:
        raise ValueError(f"amplification: ΔW {delta_w.shape} and W {W.shape} must have the same shape")
    if not 1 <= r <= min(W.shape):
        raise ValueError(f"amplification: r={r} must be in [1, {min(W.shape)}]")
    projection = _projection(delta_w, W, r)
    delta_norm = np.linalg.norm(delta_w)
    return {"delta_norm": float(delta_norm), "projection_norm": projection, "factor": float(delta_norm / projection)}


def _projection(M, W, r):
    """‖Uᵀ W Vᵀ‖_F with U (d, r), V (r, k) the top-r left and right singular vectors of M (d, k)."""
    U, _, Vh = np.linalg.svd(M, full_matrices=False)
    return float(np.linalg.norm(U[:, :r].T @ W @ Vh[:r].T))  # (r, r) -> its Frobenius norm


def projection_norms(delta_w, W, r, rng=None):
    """The paper's Table 7 for one weight matrix: ‖Uᵀ W Vᵀ‖_F with U, V the top-r singular vectors of
    ΔW ("delta"), of W itself ("W") and of a random Gaussian matrix ("random"), beside ‖W‖_F and ‖ΔW‖_F.

    ΔW amplifies directions that W has but does not emphasise when "delta" lies
    well below "W" (W's own top directions hold the most of W) yet above "random".
    factor = ‖ΔW‖_F / "delta", as in ``amplification``.  rng seeds the random matrix.
    """
    delta_w, W = _host64(delta_w), _host64(W)
    out = amplification(delta_w, W, r)
    noise = np.random.default_rng(rng).standard_normal(W.shape)
    return {"delta": out["projection_norm"], "W": _projection(W, W, r), "random": _projection(noise, W, r),
            "W_norm": float(np.linalg.norm(W)), "delta_norm": out["delta_norm"], "factor": out["factor"]}


def linear_layer_costs(d, k, r, tokens):
    """FLOPs for one training step of a d x k Linear over ``tokens`` inputs, and values held per weight matrix.

    Full fine-tuning: forward 2Ndk, dX 2Ndk, dW 2Ndk.  LoRA (frozen W0): forward
    2Ndk + 2Nr(k + d), dX 2Ndk + 2Nr(d + k), dA 2Nrk, dB 2Ndr, and no dW at all.
    Memory counts values: the gradient and AdamW's two moments per trainable value.
    """
    N = tokens
    full_flops = 6 * N * d * k
    lora_flops = 4 * N * d * k + 6 * N * r * (d + k)
    trainable_full, trainable_lora = d * k, r * (d + k)
    return {
        "full_flops": full_flops, "lora_flops": lora_flops, "flops_saved": full_flops - lora_flops,
        "trainable_full": trainable_full, "trainable_lora": trainable_lora,
        "grad_and_adam_values_full": 3 * trainable_full, "grad_and_adam_values_lora": 3 * trainable_lora,
    }
