"""Flash attention for float16 and bfloat16 on the GPU: the (T, S) scores never exist in memory.

Shapes: q (B, H, T, D), k and v (B, H, S, D) -> out (B, H, T, D), lse (B, H, T).
Legend: B batch, H heads, T queries, S keys, D head dimension (32, 64 or 128).
Causal: query t sees keys 0 .. t + S - T (the keys end with the queries, as with
a KV cache), as functional/attention.py's ``causal_mask``.

The materialised attention (fused/attention.py) writes the scores, then the
probabilities P, as (B, H, T, S) arrays and keeps P for the backward: at
T = S = 2048 that is 192 MiB per layer in float32 for GPT-2 small's 12 heads
at B = 2, against 6 MiB for q. Here a block of 128 threads (4 warps) takes 64
queries and walks over the keys 64 at a time; a 64 x 64 tile of scores lives
in shared memory and is gone when the next tile comes. The backward keeps only
q, k, v, out and lse, O(T) per row instead of O(T S), and recomputes each tile
of P from lse (FlashAttention-2, Dao 2023, Algorithms 1 and 2).

Forward, for the query tile i, over key tiles j (S_ij = scale Q_i K_j^T, 64 x 64):

    m_new = max(m, rowmax(S_ij))
    l     = l exp(m - m_new) + rowsum(exp(S_ij - m_new))
    O     = O exp(m - m_new) + exp(S_ij - m_new) V_j
    m     = m_new
    out_i = O / l,   lse_i = m + log l

Backward, for the key tile j, over query tiles i (P_ij = exp(S_ij - lse_i)):

    D_i  = rowsum(dout_i * out_i)            (first, one warp per row: = rowsum(P dP))
    dV_j += P_ij^T dout_i
    dP_ij = dout_i V_j^T
    dS_ij = P_ij * (dP_ij - D_i)
    dK_j += scale dS_ij^T Q_i
    dQ_i += scale dS_ij K_j                  (float32 atomics, see below)

Numerics: the matmuls run on tensor cores (nvcuda::wmma 16x16x16 fragments in
the input dtype, float32 accumulators); the softmax statistics m, l, the output
accumulator O and dK, dV accumulate in float32. P and dS are rounded to the input
dtype before they enter a matmul, as in FlashAttention: the one rounding that
differs from a float32 softmax.
"""
import functools

import numpy as np

SUPPORTED_HEAD_DIMS = (32, 64, 128)
TILE = 64  # queries per block and keys per step; 4 warps of 16 rows
THREADS = 128

SOURCE = r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>
using namespace nvcuda;

#define NEGATIVE_INFINITY __int_as_float(0xff800000)
constexpr int TILE = 64, THREADS = 128;
constexpr int LDP = TILE + 8;  // row stride of a half TILE x TILE tile: the padding spreads wmma's rows over the banks

__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, offset));
    return v;
}

template <typename T> using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
template <typename T> using FragAT = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major>;
template <typename T> using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
template <typename T> using FragBT = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// Rows row0 .. row0 + TILE - 1 of a (rows, D) matrix into shared memory (row stride D + 8), 16 bytes per load.
// Rows past the end are zeros: a NaN there would survive 0 * NaN in the next matmul.
template <typename T, int D>
__device__ void load_tile(T* tile, const T* src, int row0, int rows) {
    constexpr int PER_ROW = D / 8;
    for (int i = threadIdx.x; i < TILE * PER_ROW; i += THREADS) {
        int r = i / PER_ROW, c = (i % PER_ROW) * 8;
        uint4 value = make_uint4(0, 0, 0, 0);
        if (row0 + r < rows) value = *reinterpret_cast<const uint4*>(src + (long long)(row0 + r) * D + c);
        *reinterpret_cast<uint4*>(tile + r * (D + 8) + c) = value;
    }
}

// grid (ceil(T / TILE), B * H), THREADS threads; warp w owns queries q0 + 16 w .. q0 + 16 w + 15.
// Shared memory: q, k, v tiles (TILE x (D + 8)), P (TILE x LDP) in T; S (TILE x (TILE + 4)), O (TILE x (D + 4)),
// m, l, alpha (TILE each) in float.
template <typename T, int D>
__global__ void __launch_bounds__(THREADS) flash_forward(
        const T* q, const T* k, const T* v, T* out, float* lse, int queries, int keys, float scale, int causal) {
    constexpr int LDH = D + 8, LDS = TILE + 4, LDO = D + 4;
    extern __shared__ __align__(128) unsigned char smem[];
    T* q_s = reinterpret_cast<T*>(smem);
    T* k_s = q_s + TILE * LDH;
    T* v_s = k_s + TILE * LDH;
    T* p_s = v_s + TILE * LDH;
    float* s_s = reinterpret_cast<float*>(p_s + TILE * LDP);
    float* o_s = s_s + TILE * LDS;
    float* m_s = o_s + TILE * LDO;
    float* l_s = m_s + TILE;
    float* alpha_s = l_s + TILE;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, q0 = blockIdx.x * TILE, offset = keys - queries;
    const long long bh = blockIdx.y;
    q += bh * queries * D; out += bh * queries * D; lse += bh * queries;
    k += bh * keys * D; v += bh * keys * D;

    load_tile<T, D>(q_s, q, q0, queries);
    for (int i = threadIdx.x; i < TILE * LDO; i += THREADS) o_s[i] = 0.f;
    if (threadIdx.x < TILE) { m_s[threadIdx.x] = NEGATIVE_INFINITY; l_s[threadIdx.x] = 0.f; }
    __syncthreads();
    FragA<T> q_frag[D / 16];  // this warp's 16 queries stay in registers for the whole walk
    #pragma unroll
    for (int d = 0; d < D / 16; ++d) wmma::load_matrix_sync(q_frag[d], q_s + warp * 16 * LDH + d * 16, LDH);

    // causally, the block's last query q0 + TILE - 1 sees keys up to q0 + TILE - 1 + offset: later tiles are skipped
    const int end = causal ? min(keys, q0 + TILE + offset) : keys;
    for (int k0 = 0; k0 < end; k0 += TILE) {
        __syncthreads();  // every warp is done with the previous k, v tiles
        load_tile<T, D>(k_s, k, k0, keys);
        load_tile<T, D>(v_s, v, k0, keys);
        __syncthreads();
        // S_ij = Q_i K_j^T for this warp's 16 rows (the scale comes with the mask, below)
        for (int n = 0; n < TILE / 16; ++n) {
            Acc acc;
            wmma::fill_fragment(acc, 0.f);
            #pragma unroll
            for (int d = 0; d < D / 16; ++d) {
                FragBT<T> k_frag;  // K^T as a column-major matrix_b is K row-major: no transpose is written
                wmma::load_matrix_sync(k_frag, k_s + n * 16 * LDH + d * 16, LDH);
                wmma::mma_sync(acc, q_frag[d], k_frag, acc);
            }
            wmma::store_matrix_sync(s_s + warp * 16 * LDS + n * 16, acc, LDS, wmma::mem_row_major);
        }
        __syncwarp();
        // The online softmax, one row at a time with the 32 lanes across its keys.
        for (int r = 0; r < 16; ++r) {
            const int row = warp * 16 + r, t = q0 + row;
            float s[TILE / 32], tile_max = NEGATIVE_INFINITY;
            for (int j = 0; j < TILE / 32; ++j) {
                const int c = lane + 32 * j, key = k0 + c;
                const bool visible = key < keys && (!causal || key <= t + offset);
                s[j] = visible ? s_s[row * LDS + c] * scale : NEGATIVE_INFINITY;
                tile_max = fmaxf(tile_max, s[j]);
            }
            const float m_old = m_s[row], m_new = fmaxf(m_old, warp_max(tile_max));
            // A row that has seen no key yet has m = -inf: subtracting 0 instead keeps exp(-inf) = 0, never NaN.
            const float base = m_new == NEGATIVE_INFINITY ? 0.f : m_new;
            float sum = 0.f;
            for (int j = 0; j < TILE / 32; ++j) {
                const float p = __expf(s[j] - base);
                sum += p;
                p_s[row * LDP + lane + 32 * j] = from_float<T>(p);
            }
            sum = warp_sum(sum);
            __syncwarp();  // every lane has read m_s[row] before lane 0 moves it
            if (lane == 0) {
                const float alpha = __expf(m_old - base);
                m_s[row] = m_new;
                l_s[row] = l_s[row] * alpha + sum;
                alpha_s[row] = alpha;
            }
        }
        __syncwarp();
        // O = O alpha + P V. wmma hides which lane holds which row of a fragment, so O is rescaled in shared memory.
        for (int i = lane; i < 16 * D; i += 32) o_s[(warp * 16 + i / D) * LDO + i % D] *= alpha_s[warp * 16 + i / D];
        __syncwarp();
        for (int n = 0; n < D / 16; ++n) {
            Acc acc;
            wmma::load_matrix_sync(acc, o_s + warp * 16 * LDO + n * 16, LDO, wmma::mem_row_major);
            for (int kk = 0; kk < TILE / 16; ++kk) {
                FragA<T> p_frag;
                FragB<T> v_frag;
                wmma::load_matrix_sync(p_frag, p_s + warp * 16 * LDP + kk * 16, LDP);
                wmma::load_matrix_sync(v_frag, v_s + kk * 16 * LDH + n * 16, LDH);
                wmma::mma_sync(acc, p_frag, v_frag, acc);
            }
            wmma::store_matrix_sync(o_s + warp * 16 * LDO + n * 16, acc, LDO, wmma::mem_row_major);
        }
    }
    __syncwarp();
    // out = O / l, lse = m + log l (a row with no visible key: out 0, lse -inf; the caller rules those out)
    for (int i = lane; i < 16 * D; i += 32) {
        const int row = warp * 16 + i / D, t = q0 + row;
        if (t < queries) {
            const float l = l_s[row];
            out[(long long)t * D + i % D] = from_float<T>(l > 0.f ? o_s[row * LDO + i % D] / l : 0.f);
        }
    }
    if (lane < 16) {
        const int row = warp * 16 + lane, t = q0 + row;
        if (t < queries) lse[t] = l_s[row] > 0.f ? m_s[row] + logf(l_s[row]) : NEGATIVE_INFINITY;
    }
}

// D_i = rowsum(dout_i * out_i), one warp per row of (rows, D).
template <typename T>
__global__ void flash_backward_delta(const T* out, const T* dout, float* delta, int rows, int D) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    out += (long long)row * D; dout += (long long)row * D;
    float s = 0.f;
    for (int c = lane; c < D; c += 32) s += to_float(out[c]) * to_float(dout[c]);
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}

// A warp's 16 x D float32 accumulators into rows row0 .. row0 + 15 of grad (rows past `rows` are dropped),
// through the warp's own 16 rows of shared memory, since wmma hides which lane holds which element.
template <typename T, int D>
__device__ void store_rows(T* grad, Acc (&acc)[D / 16], float* scratch, int ld, int row0, int rows) {
    #pragma unroll
    for (int n = 0; n < D / 16; ++n) wmma::store_matrix_sync(scratch + n * 16, acc[n], ld, wmma::mem_row_major);
    __syncwarp();
    for (int i = threadIdx.x % 32; i < 16 * D; i += 32)
        if (row0 + i / D < rows) grad[(long long)(row0 + i / D) * D + i % D] = from_float<T>(scratch[(i / D) * ld + i % D]);
    __syncwarp();
}

// grid (ceil(S / TILE), B * H), THREADS threads; warp w owns keys k0 + 16 w .. k0 + 16 w + 15 and their dK, dV.
// It works on transposed tiles (S^T = K Q^T: rows are keys), so that dK, dV are row blocks of a warp's own products.
// Shared memory: k, v, q, dout tiles (TILE x (D + 8)), P^T and dS^T (TILE x LDP) in T; S^T (TILE x LDF), dP^T
// (TILE x (TILE + 4)), lse and D (TILE each) in float.
template <typename T, int D>
__global__ void __launch_bounds__(THREADS) flash_backward(
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,
        float* dq, T* dk, T* dv, int queries, int keys, float scale, int causal) {
    constexpr int LDH = D + 8, LDF = (D > TILE ? D : TILE) + 4, LDS = TILE + 4;
    extern __shared__ __align__(128) unsigned char smem[];
    T* k_s = reinterpret_cast<T*>(smem);
    T* v_s = k_s + TILE * LDH;
    T* q_s = v_s + TILE * LDH;
    T* do_s = q_s + TILE * LDH;
    T* pt_s = do_s + TILE * LDH;
    T* dst_s = pt_s + TILE * LDP;
    float* s_s = reinterpret_cast<float*>(dst_s + TILE * LDP);  // S^T, then P^T, then dQ and dK, dV on their way out
    float* dp_s = s_s + TILE * LDF;
    float* lse_s = dp_s + TILE * LDS;
    float* delta_s = lse_s + TILE;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, k0 = blockIdx.x * TILE, offset = keys - queries;
    const long long bh = blockIdx.y;
    q += bh * queries * D; dout += bh * queries * D; dq += bh * queries * D; lse += bh * queries; delta += bh * queries;
    k += bh * keys * D; v += bh * keys * D; dk += bh * keys * D; dv += bh * keys * D;

    load_tile<T, D>(k_s, k, k0, keys);
    load_tile<T, D>(v_s, v, k0, keys);
    Acc dk_acc[D / 16], dv_acc[D / 16];
    #pragma unroll
    for (int n = 0; n < D / 16; ++n) { wmma::fill_fragment(dk_acc[n], 0.f); wmma::fill_fragment(dv_acc[n], 0.f); }

    // causally, query t sees key k0 only if t + offset >= k0: earlier query tiles are skipped
    const int first = causal ? max(0, k0 - offset) / TILE * TILE : 0;
    for (int q0 = first; q0 < queries; q0 += TILE) {
        __syncthreads();  // every warp is done with the previous q, dout and dS^T tiles
        load_tile<T, D>(q_s, q, q0, queries);
        load_tile<T, D>(do_s, dout, q0, queries);
        if (threadIdx.x < TILE) {
            const int t = q0 + threadIdx.x;
            lse_s[threadIdx.x] = t < queries ? lse[t] : 0.f;
            delta_s[threadIdx.x] = t < queries ? delta[t] : 0.f;
        }
        __syncthreads();
        // S^T = K_j Q_i^T and dP^T = V_j dout_i^T for this warp's 16 keys
        for (int n = 0; n < TILE / 16; ++n) {
            Acc s_acc, dp_acc;
            wmma::fill_fragment(s_acc, 0.f);
            wmma::fill_fragment(dp_acc, 0.f);
            for (int d = 0; d < D / 16; ++d) {
                FragA<T> k_frag, v_frag;
                FragBT<T> q_frag, do_frag;
                wmma::load_matrix_sync(k_frag, k_s + warp * 16 * LDH + d * 16, LDH);
                wmma::load_matrix_sync(q_frag, q_s + n * 16 * LDH + d * 16, LDH);
                wmma::mma_sync(s_acc, k_frag, q_frag, s_acc);
                wmma::load_matrix_sync(v_frag, v_s + warp * 16 * LDH + d * 16, LDH);
                wmma::load_matrix_sync(do_frag, do_s + n * 16 * LDH + d * 16, LDH);
                wmma::mma_sync(dp_acc, v_frag, do_frag, dp_acc);
            }
            wmma::store_matrix_sync(s_s + warp * 16 * LDF + n * 16, s_acc, LDF, wmma::mem_row_major);
            wmma::store_matrix_sync(dp_s + warp * 16 * LDS + n * 16, dp_acc, LDS, wmma::mem_row_major);
        }
        __syncwarp();
        // P^T = exp(scale S^T - lse), dS^T = P^T (dP^T - D); hidden pairs (and the padding) get P = 0, so dS = 0
        for (int i = lane; i < 16 * TILE; i += 32) {
            const int row = warp * 16 + i / TILE, c = i % TILE, key = k0 + row, t = q0 + c;
            const bool visible = key < keys && t < queries && (!causal || key <= t + offset);
            const float p = visible ? __expf(s_s[row * LDF + c] * scale - lse_s[c]) : 0.f;
            pt_s[row * LDP + c] = from_float<T>(p);
            dst_s[row * LDP + c] = from_float<T>(p * (dp_s[row * LDS + c] - delta_s[c]));
        }
        __syncwarp();
        // dV_j += P^T dout_i, dK_j += dS^T Q_i (times scale once, at the end)
        #pragma unroll
        for (int n = 0; n < D / 16; ++n) {
            for (int kk = 0; kk < TILE / 16; ++kk) {
                FragA<T> p_frag, ds_frag;
                FragB<T> do_frag, q_frag;
                wmma::load_matrix_sync(p_frag, pt_s + warp * 16 * LDP + kk * 16, LDP);
                wmma::load_matrix_sync(do_frag, do_s + kk * 16 * LDH + n * 16, LDH);
                wmma::mma_sync(dv_acc[n], p_frag, do_frag, dv_acc[n]);
                wmma::load_matrix_sync(ds_frag, dst_s + warp * 16 * LDP + kk * 16, LDP);
                wmma::load_matrix_sync(q_frag, q_s + kk * 16 * LDH + n * 16, LDH);
                wmma::mma_sync(dk_acc[n], ds_frag, q_frag, dk_acc[n]);
            }
        }
        __syncthreads();  // dQ needs every warp's keys: all of dS^T is written
        // dQ_i += scale dS K_j, warp w now taking queries q0 + 16 w ..; dS is dS^T read column-major
        for (int n = 0; n < D / 16; ++n) {
            Acc dq_acc;
            wmma::fill_fragment(dq_acc, 0.f);
            for (int kk = 0; kk < TILE / 16; ++kk) {
                FragAT<T> ds_frag;
                FragB<T> k_frag;
                wmma::load_matrix_sync(ds_frag, dst_s + kk * 16 * LDP + warp * 16, LDP);
                wmma::load_matrix_sync(k_frag, k_s + kk * 16 * LDH + n * 16, LDH);
                wmma::mma_sync(dq_acc, ds_frag, k_frag, dq_acc);
            }
            wmma::store_matrix_sync(s_s + warp * 16 * LDF + n * 16, dq_acc, LDF, wmma::mem_row_major);
        }
        __syncwarp();
        // Key tiles run in parallel blocks and all add into the same dQ rows, hence atomics (float32, so the
        // order of the additions changes only the last bits). A second kernel over query tiles would avoid
        // them but would compute S and dP a second time: 7 matmuls per tile pair instead of 5.
        for (int i = lane; i < 16 * D; i += 32) {
            const int row = warp * 16 + i / D, t = q0 + row;
            if (t < queries) atomicAdd(dq + (long long)t * D + i % D, scale * s_s[row * LDF + i % D]);
        }
    }
    // dK = scale sum dS^T Q, dV = sum P^T dout
    #pragma unroll
    for (int n = 0; n < D / 16; ++n)
        for (int e = 0; e < dk_acc[n].num_elements; ++e) dk_acc[n].x[e] *= scale;
    store_rows<T, D>(dk, dk_acc, s_s + warp * 16 * LDF, LDF, k0 + warp * 16, keys);
    store_rows<T, D>(dv, dv_acc, s_s + warp * 16 * LDF, LDF, k0 + warp * 16, keys);
}

// y = x rounded to T (dQ's float32 accumulator into the input dtype)
template <typename T>
__global__ void flash_cast(const float* x, T* y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = from_float<T>(x[i]);
}
"""

_CTYPES = {"float16": "__half", "bfloat16": "__nv_bfloat16"}


def forward_shared_bytes(D):
    """Shared memory of ``flash_forward<T, D>``, as its layout: q, k, v, P tiles in T; S, O, m, l, alpha in float."""
    return 2 * (3 * TILE * (D + 8) + TILE * (TILE + 8)) + 4 * (TILE * (TILE + 4) + TILE * (D + 4) + 3 * TILE)


def backward_shared_bytes(D):
    """Shared memory of ``flash_backward<T, D>``: k, v, q, dout, P^T, dS^T tiles in T; S^T, dP^T, lse, D in float."""
    return 2 * (4 * TILE * (D + 8) + 2 * TILE * (TILE + 8)) + 4 * (TILE * (max(D, TILE) + 4) + TILE * (TILE + 4) + 2 * TILE)


@functools.lru_cache(maxsize=None)
def _kernels(dtype_name, D):
    """The compiled kernels for one dtype and head dimension (NVRTC, on first use; CuPy caches them on disk)."""
    import cupy

    ctype = _CTYPES[dtype_name]
    names = {"forward": f"flash_forward<{ctype}, {D}>", "backward": f"flash_backward<{ctype}, {D}>",
             "delta": f"flash_backward_delta<{ctype}>", "cast": f"flash_cast<{ctype}>"}
    module = cupy.RawModule(code=SOURCE, options=("--std=c++17",), name_expressions=tuple(names.values()))
    kernels = {key: module.get_function(name) for key, name in names.items()}
    # Above 48 KiB a kernel must ask for its dynamic shared memory (an H200 block may have up to 227 KiB).
    kernels["forward"].max_dynamic_shared_size_bytes = forward_shared_bytes(D)
    kernels["backward"].max_dynamic_shared_size_bytes = backward_shared_bytes(D)
    return kernels


def _check(name, q, k, v, causal):
    """The inputs as contiguous, 16-byte aligned CuPy arrays; a clear error for anything the kernels cannot take."""
    import cupy

    dtypes = {a.dtype.name for a in (q, k, v)}
    if len(dtypes) != 1 or dtypes.pop() not in _CTYPES:
        raise TypeError(f"{name}: q, k, v must all be float16 or all bfloat16, got {q.dtype}, {k.dtype}, {v.dtype}. "
                        "Fix: cast them (float32 and float64 take minilora.fused.attention).")
    if q.ndim < 2 or k.shape != v.shape or q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{name}: q {q.shape}, k {k.shape}, v {v.shape} do not fit: expected q (..., T, D) and "
                         "k, v (..., S, D) with the same leading axes")
    D, T, S = q.shape[-1], q.shape[-2], k.shape[-2]
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"{name}: head dimension D={D} is not supported (the kernels take D in {SUPPORTED_HEAD_DIMS}). "
                         "Fix: use the materialised attention (minilora.fused.attention) for this D.")
    if causal and S < T:
        raise ValueError(f"{name}: causal with fewer keys than queries (T={T}, S={S}) leaves the first {T - S} "
                         "queries no key to see. Fix: pass S >= T keys.")

    def ready(a):
        a = cupy.ascontiguousarray(a)
        return a if a.data.ptr % 16 == 0 else a.copy()  # the kernels load 16 bytes at a time
    return [ready(a) for a in (q, k, v)]


def flash_attention_forward(q, k, v, scale, causal):
    """out = softmax(scale q k^T + causal mask) v without the (T, S) scores.

    q (B, H, T, D), k and v (B, H, S, D): CuPy float16 or bfloat16 (any leading axes, the same for all three).
    Returns out (B, H, T, D) in the input dtype and lse (B, H, T) float32, each row's log-sum-exp of the scaled,
    masked scores: what the backward needs besides q, k, v and out.
    """
    import cupy

    q, k, v = _check("flash_attention_forward", q, k, v, causal)
    D, T, S = q.shape[-1], q.shape[-2], k.shape[-2]
    out = cupy.empty_like(q)  # (B, H, T, D)
    lse = cupy.empty(q.shape[:-1], dtype=np.float32)  # (B, H, T)
    heads = q.size // (T * D) if T else 0
    if heads == 0 or S == 0:
        out.fill(0)
        lse.fill(-np.inf)
        return out, lse
    grid = ((T + TILE - 1) // TILE, heads)
    _kernels(q.dtype.name, D)["forward"](grid, (THREADS,), (q, k, v, out, lse, np.int32(T), np.int32(S),
                                          np.float32(scale), np.int32(bool(causal))), shared_mem=forward_shared_bytes(D))
    return out, lse


def flash_attention_backward(q, k, v, out, lse, dout, scale, causal):
    """dq, dk, dv of ``flash_attention_forward``, each tile of P recomputed from lse.

    q (B, H, T, D), k and v (B, H, S, D), out and dout (B, H, T, D), all of one dtype (float16 or bfloat16);
    lse (B, H, T) float32 from the forward. Returns dq (B, H, T, D), dk and dv (B, H, S, D) in the input dtype.
    """
    import cupy

    q, k, v = _check("flash_attention_backward", q, k, v, causal)
    if out.shape != q.shape or dout.shape != q.shape or lse.shape != q.shape[:-1]:
        raise ValueError(f"flash_attention_backward: out {out.shape}, dout {dout.shape}, lse {lse.shape} do not fit "
                         f"q {q.shape}: expected out and dout {q.shape}, lse {q.shape[:-1]}")
    out, dout = (cupy.ascontiguousarray(a, dtype=q.dtype) for a in (out, dout))
    lse = cupy.ascontiguousarray(lse, dtype=np.float32)
    D, T, S = q.shape[-1], q.shape[-2], k.shape[-2]
    heads = q.size // (T * D) if T else 0
    dq, dk, dv = cupy.empty_like(q), cupy.empty_like(k), cupy.empty_like(v)  # the kernel writes every row of dk, dv
    if heads == 0 or S == 0:
        for grad in (dq, dk, dv):
            grad.fill(0)
        return dq, dk, dv
    kernels = _kernels(q.dtype.name, D)
    rows = heads * T
    delta = cupy.empty(q.shape[:-1], dtype=np.float32)  # (B, H, T)
    kernels["delta"](((rows + 7) // 8,), (256,), (out, dout, delta, np.int32(rows), np.int32(D)))
    dq_sum = cupy.zeros(q.shape, dtype=np.float32)  # (B, H, T, D), the atomics' float32 accumulator
    grid = ((S + TILE - 1) // TILE, heads)
    kernels["backward"](grid, (THREADS,), (q, k, v, dout, lse, delta, dq_sum, dk, dv, np.int32(T), np.int32(S),
                                           np.float32(scale), np.int32(bool(causal))),
                        shared_mem=backward_shared_bytes(D))
    kernels["cast"]((min((dq.size + 255) // 256, 65535),), (256,), (dq_sum, dq, np.int64(dq.size)))
    return dq, dk, dv
