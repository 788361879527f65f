"""Flash attention for float16 and bfloat16 on the GPU: the (T, S) scores never exist in memory.

Shapes: q (B, H, T, D), k and v (B, H, S, D) -> out (B, H, T, D), lse (B, H, T).
Legend: B batch, H heads, T queries, S keys, D head dimension (32, 64 or 128).
Causal: query t sees keys 0 .. t + S - T (the keys end with the queries, as with
a KV cache), as functional/attention.py's ``causal_mask``.

The materialised attention (fused/attention.py) writes the scores, then the
probabilities P, as (B, H, T, S) arrays and keeps P for the backward: at
T = S = 2048 that is 384 MiB per layer in float32 for GPT-2 small's 12 heads
at B = 2, against 6 MiB for q in bf16. Here a block of 128 threads (4 warps of
16 queries) takes 64 queries and walks over the keys 64 at a time: the k and v
tiles pass through shared memory, and a 64 x 64 tile of scores lives in the
warps' registers until the next tile comes. The backward keeps only q, k, v,
out and lse, O(T) per row instead of O(T S), and recomputes each tile of P
from lse (FlashAttention-2, Dao 2023, Algorithms 1 and 2). Memory and time
against the materialised path and torch: bench/bench_attention_gpu.py.

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

Numerics: the matmuls run on tensor cores (PTX mma.sync m16n8k16 in the input
dtype with float32 accumulators); the softmax statistics m, l, the output
accumulator O and dK, dV, dQ accumulate in float32, in registers. P and dS are
rounded to the input dtype before they enter a matmul, as in FlashAttention:
the one rounding that differs from a float32 softmax.
"""
import functools

import numpy as np

SUPPORTED_HEAD_DIMS = (32, 64, 128)
TILE = 64  # queries per block and keys per step; 4 warps of 16 rows
THREADS = 128

SOURCE = r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#define NEGATIVE_INFINITY __int_as_float(0xff800000)
constexpr int TILE = 64, THREADS = 128;
constexpr int LDP = TILE + 8;  // row stride of a TILE x TILE tile in T: the padding spreads a fragment's rows over the banks

__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
    return v;
}
// over the 4 lanes that hold one row of an accumulator (lanes 4 g .. 4 g + 3)
__device__ __forceinline__ float row_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffff, v, 2));
}
__device__ __forceinline__ float row_sum(float v) {
    v += __shfl_xor_sync(0xffffffff, v, 1);
    return v + __shfl_xor_sync(0xffffffff, v, 2);
}

// Tensor cores through PTX's mma.sync.m16n8k16 (CUDA's pip wheels, which CuPy compiles against, lack <mma.h>).
// Its lane layout (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with g = lane / 4 and c = 2 (lane % 4):
//   A (16 x 16, in T):    x[0] = A[g][c, c+1], x[1] = A[g+8][c, c+1], x[2] = A[g][c+8, c+9], x[3] = A[g+8][c+8, c+9]
//   B (16 x 8, in T):     B[c, c+1][g] and B[c+8, c+9][g]
//   C (16 x 8, float32):  C[g][c, c+1] and C[g+8][c, c+1]
// A 16 x 16 product is two of them, side by side. Since the layout is known, a lane knows which rows it holds:
// the softmax runs on the accumulators in registers, and a C tile of P is already the A operand of P V.
struct FragA { unsigned x[4]; };  // 16 x 16 left operand, two values of T per register
struct FragB { unsigned x[4]; };  // 16 x 16 right operand: x[0..1] for columns 0..7, x[2..3] for columns 8..15
struct Acc { float x[8]; };       // 16 x 16 float32: x[e] is row g + 8 ((e / 2) % 2), column 8 (e / 4) + c + e % 2

template <typename T> struct Mma;
template <> struct Mma<__half> {
    static __device__ __forceinline__ void run(float* d, const unsigned* a, const unsigned* b) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<unsigned*>(&v);
    }
};
template <> struct Mma<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float* d, const unsigned* a, const unsigned* b) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<unsigned*>(&v);
    }
};

// acc += a b
template <typename T> __device__ __forceinline__ void mma(Acc& acc, const FragA& a, const FragB& b) {
    Mma<T>::run(acc.x, a.x, b.x);
    Mma<T>::run(acc.x + 4, a.x, b.x + 2);
}
__device__ __forceinline__ void fill(Acc& acc, float value) {
    for (int e = 0; e < 8; ++e) acc.x[e] = value;
}
// An Acc's values, each rounded to T, as the A operand of the next product (its C layout is A's layout).
template <typename T> __device__ __forceinline__ FragA as_operand(const float* x) {
    return FragA{{Mma<T>::pack(x[0], x[1]), Mma<T>::pack(x[2], x[3]), Mma<T>::pack(x[4], x[5]), Mma<T>::pack(x[6], x[7])}};
}

__device__ __forceinline__ unsigned pair(const unsigned short* p, int i, int j) { return p[i] | ((unsigned)p[j] << 16); }
__device__ __forceinline__ unsigned word(const unsigned short* p, int i) { return *reinterpret_cast<const unsigned*>(p + i); }

// A[m][k] = tile[m * ld + k]
template <typename T> __device__ __forceinline__ FragA load_a(const T* tile, int ld) {
    const unsigned short* p = reinterpret_cast<const unsigned short*>(tile);
    const int g = threadIdx.x % 32 / 4, c = 2 * (threadIdx.x % 4);
    return FragA{{word(p, g * ld + c), word(p, (g + 8) * ld + c), word(p, g * ld + c + 8), word(p, (g + 8) * ld + c + 8)}};
}
// A[m][k] = tile[k * ld + m]: A stored transposed
template <typename T> __device__ __forceinline__ FragA load_a_transposed(const T* tile, int ld) {
    const unsigned short* p = reinterpret_cast<const unsigned short*>(tile);
    const int g = threadIdx.x % 32 / 4, c = 2 * (threadIdx.x % 4);
    return FragA{{pair(p, c * ld + g, (c + 1) * ld + g), pair(p, c * ld + g + 8, (c + 1) * ld + g + 8),
                  pair(p, (c + 8) * ld + g, (c + 9) * ld + g), pair(p, (c + 8) * ld + g + 8, (c + 9) * ld + g + 8)}};
}
// B[k][n] = tile[k * ld + n]
template <typename T> __device__ __forceinline__ FragB load_b(const T* tile, int ld) {
    const unsigned short* p = reinterpret_cast<const unsigned short*>(tile);
    const int g = threadIdx.x % 32 / 4, c = 2 * (threadIdx.x % 4);
    return FragB{{pair(p, c * ld + g, (c + 1) * ld + g), pair(p, (c + 8) * ld + g, (c + 9) * ld + g),
                  pair(p, c * ld + g + 8, (c + 1) * ld + g + 8), pair(p, (c + 8) * ld + g + 8, (c + 9) * ld + g + 8)}};
}
// B[k][n] = tile[n * ld + k]: B stored transposed, as K is for Q K^T
template <typename T> __device__ __forceinline__ FragB load_b_transposed(const T* tile, int ld) {
    const unsigned short* p = reinterpret_cast<const unsigned short*>(tile);
    const int g = threadIdx.x % 32 / 4, c = 2 * (threadIdx.x % 4);
    return FragB{{word(p, g * ld + c), word(p, g * ld + c + 8), word(p, (g + 8) * ld + c), word(p, (g + 8) * ld + c + 8)}};
}

// Rows row0 .. row0 + TILE - 1 of a (rows, D) matrix into shared memory (row stride D + 8), 16 bytes per load.
// Rows past the end are zeros: a NaN there would survive 0 * NaN in the next product.
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

// grid (ceil(T / TILE), B * H), THREADS threads; warp w owns queries q0 + 16 w .. q0 + 16 w + 15, and a lane
// the rows g and g + 8 of those (i = 0, 1 below). Shared memory: the q, k, v tiles (TILE x (D + 8) each, in T).
template <typename T, int D>
__global__ void __launch_bounds__(THREADS) flash_forward(
        const T* q, const T* k, const T* v, T* out, float* lse, int queries, int keys, float scale, int causal) {
    constexpr int LDH = D + 8;
    extern __shared__ __align__(128) unsigned char smem[];
    T* q_s = reinterpret_cast<T*>(smem);
    T* k_s = q_s + TILE * LDH;
    T* v_s = k_s + TILE * LDH;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = 2 * (lane % 4);
    const int q0 = blockIdx.x * TILE, offset = keys - queries;
    const long long bh = blockIdx.y;
    q += bh * queries * D; out += bh * queries * D; lse += bh * queries;
    k += bh * keys * D; v += bh * keys * D;

    load_tile<T, D>(q_s, q, q0, queries);
    __syncthreads();
    FragA q_frag[D / 16];  // this warp's 16 queries stay in registers for the whole walk
    #pragma unroll
    for (int d = 0; d < D / 16; ++d) q_frag[d] = load_a(q_s + warp * 16 * LDH + d * 16, LDH);
    const int t[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    float m[2] = {NEGATIVE_INFINITY, NEGATIVE_INFINITY}, l[2] = {0.f, 0.f};
    Acc o[D / 16];
    #pragma unroll
    for (int n = 0; n < D / 16; ++n) fill(o[n], 0.f);

    // causally, the block's last query q0 + TILE - 1 sees keys up to q0 + TILE - 1 + offset: later tiles are skipped
    const int end = causal ? min(keys, q0 + TILE + offset) : keys;
    for (int k0 = 0; k0 < end; k0 += TILE) {
        __syncthreads();  // every warp is done with the previous k, v tiles
        load_tile<T, D>(k_s, k, k0, keys);
        load_tile<T, D>(v_s, v, k0, keys);
        __syncthreads();
        // S_ij = scale Q_i K_j^T (K^T as the B operand is K's rows: no transpose is written), masked
        Acc s[TILE / 16];
        float tile_max[2] = {NEGATIVE_INFINITY, NEGATIVE_INFINITY};
        #pragma unroll
        for (int n = 0; n < TILE / 16; ++n) {
            fill(s[n], 0.f);
            #pragma unroll
            for (int d = 0; d < D / 16; ++d) mma<T>(s[n], q_frag[d], load_b_transposed(k_s + n * 16 * LDH + d * 16, LDH));
            #pragma unroll
            for (int e = 0; e < 8; ++e) {
                const int i = e / 2 % 2, key = k0 + 16 * n + 8 * (e / 4) + c + e % 2;
                const bool visible = key < keys && (!causal || key <= t[i] + offset);
                s[n].x[e] = visible ? s[n].x[e] * scale : NEGATIVE_INFINITY;
                tile_max[i] = fmaxf(tile_max[i], s[n].x[e]);
            }
        }
        // m_new = max(m, rowmax(S_ij)); a row that has seen no key yet has m = -inf, and subtracting 0 instead
        // keeps exp(-inf) = 0, never NaN
        float base[2], alpha[2];
        #pragma unroll
        for (int i = 0; i < 2; ++i) {
            const float m_new = fmaxf(m[i], row_max(tile_max[i]));
            base[i] = m_new == NEGATIVE_INFINITY ? 0.f : m_new;
            alpha[i] = __expf(m[i] - base[i]);
            m[i] = m_new;
        }
        // P = exp(S_ij - m_new), rounded to T as the A operand of P V; l = l alpha + rowsum(P)
        FragA p[TILE / 16];
        float sum[2] = {0.f, 0.f};
        #pragma unroll
        for (int n = 0; n < TILE / 16; ++n) {
            #pragma unroll
            for (int e = 0; e < 8; ++e) {
                s[n].x[e] = __expf(s[n].x[e] - base[e / 2 % 2]);
                sum[e / 2 % 2] += s[n].x[e];
            }
            p[n] = as_operand<T>(s[n].x);
        }
        #pragma unroll
        for (int i = 0; i < 2; ++i) l[i] = l[i] * alpha[i] + row_sum(sum[i]);
        // O = O alpha + P V_j
        #pragma unroll
        for (int n = 0; n < D / 16; ++n) {
            #pragma unroll
            for (int e = 0; e < 8; ++e) o[n].x[e] *= alpha[e / 2 % 2];
            #pragma unroll
            for (int kk = 0; kk < TILE / 16; ++kk) mma<T>(o[n], p[kk], load_b(v_s + kk * 16 * LDH + n * 16, LDH));
        }
    }
    // out = O / l, lse = m + log l (a row with no visible key: out 0, lse -inf; the caller rules those out)
    #pragma unroll
    for (int i = 0; i < 2; ++i) {
        if (t[i] >= queries) continue;
        const float inverse = l[i] > 0.f ? 1.f / l[i] : 0.f;
        #pragma unroll
        for (int n = 0; n < D / 16; ++n)
            #pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int col = 16 * n + 8 * h + c;
                *reinterpret_cast<unsigned*>(out + (long long)t[i] * D + col) =
                    Mma<T>::pack(o[n].x[4 * h + 2 * i] * inverse, o[n].x[4 * h + 2 * i + 1] * inverse);
            }
        if (lane % 4 == 0) lse[t[i]] = l[i] > 0.f ? m[i] + logf(l[i]) : NEGATIVE_INFINITY;
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

// grid (ceil(S / TILE), B * H), THREADS threads; warp w owns keys k0 + 16 w .. k0 + 16 w + 15 and their dK, dV,
// a lane the keys g and g + 8 of those. It works on transposed tiles (S^T = K Q^T: rows are keys), so that
// dK, dV are sums of a warp's own products, and P^T, dS^T come out of the accumulators as A operands.
// Shared memory: the k, v, q, dout tiles (TILE x (D + 8)) and dS^T (TILE x LDP) in T; lse and D (TILE) in float.
template <typename T, int D>
__global__ void __launch_bounds__(THREADS) flash_backward(
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,
        float* dq, T* dk, T* dv, int queries, int keys, float scale, int causal) {
    constexpr int LDH = D + 8;
    extern __shared__ __align__(128) unsigned char smem[];
    T* k_s = reinterpret_cast<T*>(smem);
    T* v_s = k_s + TILE * LDH;
    T* q_s = v_s + TILE * LDH;
    T* do_s = q_s + TILE * LDH;
    T* dst_s = do_s + TILE * LDH;
    float* lse_s = reinterpret_cast<float*>(dst_s + TILE * LDP);
    float* delta_s = lse_s + TILE;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = 2 * (lane % 4);
    const int k0 = blockIdx.x * TILE, offset = keys - queries;
    const long long bh = blockIdx.y;
    q += bh * queries * D; dout += bh * queries * D; dq += bh * queries * D; lse += bh * queries; delta += bh * queries;
    k += bh * keys * D; v += bh * keys * D; dk += bh * keys * D; dv += bh * keys * D;

    load_tile<T, D>(k_s, k, k0, keys);
    load_tile<T, D>(v_s, v, k0, keys);
    const int key[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};
    Acc dk_acc[D / 16], dv_acc[D / 16];
    #pragma unroll
    for (int n = 0; n < D / 16; ++n) { fill(dk_acc[n], 0.f); fill(dv_acc[n], 0.f); }

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
        FragA pt[TILE / 16], dst[TILE / 16];
        #pragma unroll
        for (int n = 0; n < TILE / 16; ++n) {
            // S^T = K_j Q_i^T and dP^T = V_j dout_i^T for this warp's 16 keys and 16 queries q0 + 16 n ..
            Acc s, dp;
            fill(s, 0.f);
            fill(dp, 0.f);
            #pragma unroll
            for (int d = 0; d < D / 16; ++d) {
                mma<T>(s, load_a(k_s + warp * 16 * LDH + d * 16, LDH), load_b_transposed(q_s + n * 16 * LDH + d * 16, LDH));
                mma<T>(dp, load_a(v_s + warp * 16 * LDH + d * 16, LDH), load_b_transposed(do_s + n * 16 * LDH + d * 16, LDH));
            }
            // P^T = exp(scale S^T - lse), dS^T = P^T (dP^T - D); hidden pairs (and the padding) get P = 0, so dS = 0
            #pragma unroll
            for (int e = 0; e < 8; ++e) {
                const int i = e / 2 % 2, col = 16 * n + 8 * (e / 4) + c + e % 2, t = q0 + col;
                const bool visible = key[i] < keys && t < queries && (!causal || key[i] <= t + offset);
                s.x[e] = visible ? __expf(s.x[e] * scale - lse_s[col]) : 0.f;
                dp.x[e] = s.x[e] * (dp.x[e] - delta_s[col]);
            }
            pt[n] = as_operand<T>(s.x);
            dst[n] = as_operand<T>(dp.x);
            // dS^T to shared memory too, for dQ, which needs every warp's keys
            #pragma unroll
            for (int e = 0; e < 8; e += 2) {
                const int row = warp * 16 + g + 8 * (e / 2 % 2), col = 16 * n + 8 * (e / 4) + c;
                *reinterpret_cast<unsigned*>(dst_s + row * LDP + col) = dst[n].x[e / 2];
            }
        }
        // dV_j += P^T dout_i, dK_j += dS^T Q_i (times scale once, at the end)
        #pragma unroll
        for (int n = 0; n < D / 16; ++n) {
            #pragma unroll
            for (int kk = 0; kk < TILE / 16; ++kk) {
                mma<T>(dv_acc[n], pt[kk], load_b(do_s + kk * 16 * LDH + n * 16, LDH));
                mma<T>(dk_acc[n], dst[kk], load_b(q_s + kk * 16 * LDH + n * 16, LDH));
            }
        }
        __syncthreads();  // all of dS^T is written
        // dQ_i += scale dS K_j, warp w now taking queries q0 + 16 w ..: dS is dS^T read transposed.
        // Key tiles run in parallel blocks and all add into the same dQ rows, hence atomics (float32, so the
        // order of the additions changes only the last bits). A second kernel over query tiles would avoid
        // them but would compute S and dP a second time: 7 matmuls per tile pair instead of 5.
        #pragma unroll
        for (int n = 0; n < D / 16; ++n) {
            Acc dq_acc;
            fill(dq_acc, 0.f);
            #pragma unroll
            for (int kk = 0; kk < TILE / 16; ++kk)
                mma<T>(dq_acc, load_a_transposed(dst_s + kk * 16 * LDP + warp * 16, LDP), load_b(k_s + kk * 16 * LDH + n * 16, LDH));
            #pragma unroll
            for (int e = 0; e < 8; ++e) {
                const int t = q0 + warp * 16 + g + 8 * (e / 2 % 2), col = 16 * n + 8 * (e / 4) + c + e % 2;
                if (t < queries) atomicAdd(dq + (long long)t * D + col, scale * dq_acc.x[e]);
            }
        }
    }
    // dK = scale sum dS^T Q, dV = sum P^T dout
    #pragma unroll
    for (int i = 0; i < 2; ++i) {
        if (key[i] >= keys) continue;
        #pragma unroll
        for (int n = 0; n < D / 16; ++n)
            #pragma unroll
            for (int h = 0; h < 2; ++h) {
                const long long at = (long long)key[i] * D + 16 * n + 8 * h + c;
                const int e = 4 * h + 2 * i;
                *reinterpret_cast<unsigned*>(dk + at) = Mma<T>::pack(scale * dk_acc[n].x[e], scale * dk_acc[n].x[e + 1]);
                *reinterpret_cast<unsigned*>(dv + at) = Mma<T>::pack(dv_acc[n].x[e], dv_acc[n].x[e + 1]);
            }
    }
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
    """Shared memory of ``flash_forward<T, D>``, as its layout: the q, k, v tiles in T (2 bytes)."""
    return 2 * 3 * TILE * (D + 8)


def backward_shared_bytes(D):
    """Shared memory of ``flash_backward<T, D>``: the k, v, q, dout and dS^T tiles in T; lse and D in float."""
    return 2 * (4 * TILE * (D + 8) + TILE * (TILE + 8)) + 4 * 2 * TILE


@functools.lru_cache(maxsize=None)
def _kernels(dtype_name, D):
    """The compiled kernels for one dtype and head dimension (NVRTC, on first use; CuPy caches them on disk)."""
    import cupy

    ctype = _CTYPES[dtype_name]
    names = {"forward": f"flash_forward<{ctype}, {D}>", "backward": f"flash_backward<{ctype}, {D}>",
             "delta": f"flash_backward_delta<{ctype}>", "cast": f"flash_cast<{ctype}>"}
    module = cupy.RawModule(code=SOURCE, options=("--std=c++17",), name_expressions=tuple(names.values()))
    kernels = {key: module.get_function(name) for key, name in names.items()}
    # Above 48 KiB (D = 128) a kernel must ask for its dynamic shared memory (an H200 block may have 227 KiB).
    for key, size in (("forward", forward_shared_bytes(D)), ("backward", backward_shared_bytes(D))):
        if size > 48 * 1024:
            kernels[key].max_dynamic_shared_size_bytes = size
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
