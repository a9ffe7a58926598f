__device__ __forceinline__ float tc_bf16_to_f32(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

__device__ __forceinline__ float tc_round_f16(float f) { return tc_f16_to_f32(tc_f32_to_f16(f)); }
__device__ __forceinline__ float tc_round_bf16(float f) { return tc_bf16_to_f32(tc_f32_to_bf16(f)); }

// max/min that propagate NaN, as torch.maximum/torch.minimum and torch.max/torch.min do.
__device__ __forceinline__ float tc_max(float a, float b) { return (a != a || a > b) ? a : b; }
__device__ __forceinline__ float tc_min(float a, float b) { return (a != a || a < b) ? a : b; }
__device__ __forceinline__ float tc_add(float a, float b) { return a + b; }

// 1/d for the denominators `1 + e^t` of sigmoid, silu and gelu_tanh (d >= 1, +inf or NaN):
// the approximate reciprocal refined by one Newton step, so within 0.5 ulp plus 2^-40
// relative where 1/d is normal; 0 for d = +inf (where the step would give NaN) and where
// 1/d < 2^-126 (`ftz`), NaN for NaN. Five instructions and no branch, where the IEEE
// `1.0f / d` takes about ten and a slow-path branch (tests/cuda/sass.rs). These functions
// promise ulps, not correct rounding (`ir::eval::unary_accuracy`); a user's `/` stays IEEE.
__device__ __forceinline__ float tc_recip_ge1(float d) {
    const float r = tc_rcp_approx(d);
    const float refined = fmaf(r, fmaf(-d, r, 1.0f), r);
    return d == __int_as_float(0x7f800000) ? 0.0f : refined;
}
__device__ __forceinline__ float tc_sigmoid(float x) { return tc_recip_ge1(1.0f + expf(-x)); }
__device__ __forceinline__ float tc_silu(float x) { return x * tc_sigmoid(x); }

// Integers (i32, i64 and bool values are held as long long): two's-complement wrapping
// arithmetic (by way of unsigned, so overflow is defined), i32 wrapping, and the float to
// integer conversions of ir::eval (truncate; NaN gives 0; out of range saturates).
__device__ __forceinline__ long long tc_iadd(long long a, long long b) {
    return (long long)((unsigned long long)a + (unsigned long long)b);
}
__device__ __forceinline__ long long tc_isub(long long a, long long b) {
    return (long long)((unsigned long long)a - (unsigned long long)b);
}
__device__ __forceinline__ long long tc_imul(long long a, long long b) {
    return (long long)((unsigned long long)a * (unsigned long long)b);
}
__device__ __forceinline__ long long tc_wrap_i32(long long v) {
    return (long long)(int)(unsigned int)(unsigned long long)v;
}
__device__ __forceinline__ long long tc_ipow(long long a, long long b) {
    if (b < 0) return a == 1 ? 1 : (a == -1 ? ((b & 1) ? -1 : 1) : 0);
    long long acc = 1;
    while (b > 0) {
        if (b & 1) acc = tc_imul(acc, a);
        a = tc_imul(a, a);
        b >>= 1;
    }
    return acc;
}
__device__ __forceinline__ long long tc_f2i64(float x) {
    if (x != x) return 0;
    if (x >= 9223372036854775808.0f) return 9223372036854775807LL;
    if (x < -9223372036854775808.0f) return (-9223372036854775807LL - 1);
    return (long long)x;
}
__device__ __forceinline__ long long tc_f2i32(float x) {
    if (x != x) return 0;
    if (x >= 2147483648.0f) return 2147483647LL;
    if (x < -2147483648.0f) return -2147483648LL;
    return (long long)(int)x;
}
__device__ __forceinline__ long long tc_max(long long a, long long b) { return a > b ? a : b; }
__device__ __forceinline__ long long tc_min(long long a, long long b) { return a < b ? a : b; }
__device__ __forceinline__ long long tc_add(long long a, long long b) { return tc_iadd(a, b); }

#define TC_WARP_REDUCE_T(T, NAME, OP)                                    \
    __device__ __forceinline__ T NAME(T v) {                             \
        for (int o = 16; o > 0; o >>= 1) {                               \
            v = OP(v, __shfl_xor_sync(0xffffffffu, v, o));               \
        }                                                                \
        return v;                                                        \
    }
TC_WARP_REDUCE_T(long long, tc_warp_sum, tc_add)
TC_WARP_REDUCE_T(long long, tc_warp_max, tc_max)
TC_WARP_REDUCE_T(long long, tc_warp_min, tc_min)

#define TC_WARP_REDUCE(NAME, OP)                                         \
    __device__ __forceinline__ float NAME(float v) {                     \
        for (int o = 16; o > 0; o >>= 1) {                               \
            v = OP(v, __shfl_xor_sync(0xffffffffu, v, o));               \
        }                                                                \
        return v;                                                        \
    }
TC_WARP_REDUCE(tc_warp_sum, tc_add)
TC_WARP_REDUCE(tc_warp_max, tc_max)
TC_WARP_REDUCE(tc_warp_min, tc_min)

// Reduce over the whole block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the result. `sh` holds 32 floats; the leading barrier makes it safe to reuse.
#define TC_BLOCK_REDUCE(NAME, WARP, OP, IDENTITY)                        \
    __device__ __forceinline__ float NAME(float v, float* sh) {          \
        const int lane = threadIdx.x & 31;                               \
        const int warp = threadIdx.x >> 5;                               \
        v = WARP(v);                                                     \
        __syncthreads();                                                 \
        if (lane == 0) sh[warp] = v;                                     \
        __syncthreads();                                                 \
        if (warp == 0) {                                                 \
            float w = (lane < (int)(blockDim.x >> 5)) ? sh[lane] : (IDENTITY); \
            w = WARP(w);                                                 \
            if (lane == 0) sh[0] = w;                                    \
        }                                                                \
        __syncthreads();                                                 \
        return sh[0];                                                    \
    }
#define TC_BLOCK_REDUCE_T(T, NAME, WARP, OP, IDENTITY)                   \
    __device__ __forceinline__ T NAME(T v, T* sh) {                      \
        const int lane = threadIdx.x & 31;                               \
        const int warp = threadIdx.x >> 5;                               \
        v = WARP(v);                                                     \
        __syncthreads();                                                 \
        if (lane == 0) sh[warp] = v;                                     \
        __syncthreads();                                                 \
        if (warp == 0) {                                                 \
            T w = (lane < (int)(blockDim.x >> 5)) ? sh[lane] : (IDENTITY); \
            w = WARP(w);                                                 \
            if (lane == 0) sh[0] = w;                                    \
        }                                                                \
        __syncthreads();                                                 \
        return sh[0];                                                    \
    }
TC_BLOCK_REDUCE_T(long long, tc_block_sum, tc_warp_sum, tc_add, 0LL)
TC_BLOCK_REDUCE_T(long long, tc_block_max, tc_warp_max, tc_max, (-9223372036854775807LL - 1))
TC_BLOCK_REDUCE_T(long long, tc_block_min, tc_warp_min, tc_min, 9223372036854775807LL)
TC_BLOCK_REDUCE(tc_block_sum, tc_warp_sum, tc_add, 0.0f)
TC_BLOCK_REDUCE(tc_block_max, tc_warp_max, tc_max, __int_as_float(0xff800000))
TC_BLOCK_REDUCE(tc_block_min, tc_warp_min, tc_min, __int_as_float(0x7f800000))
// Reduce across the warps of a block whose lane l of every warp works on row l (a row
// split over blockDim.x / 32 "slices", at most 32); every thread gets its row's result.
// `sh` holds 33 * 32 floats (padded against bank conflicts).
#define TC_SLICE_REDUCE(NAME, OP)                                        \
    __device__ __forceinline__ float NAME(float v, float* sh) {          \
        const int lane = threadIdx.x & 31;                               \
        const int slice = threadIdx.x >> 5;                              \
        __syncthreads();                                                 \
        sh[slice * 33 + lane] = v;                                       \
        __syncthreads();                                                 \
        if (slice == 0) {                                                \
            for (int s = 1; s < (int)(blockDim.x >> 5); ++s) {           \
                v = OP(v, sh[s * 33 + lane]);                            \
            }                                                            \
            sh[lane] = v;                                                \
        }                                                                \
        __syncthreads();                                                 \
        return sh[lane];                                                 \
    }
#define TC_SLICE_REDUCE_T(T, NAME, OP)                                   \
    __device__ __forceinline__ T NAME(T v, T* sh) {                      \
        const int lane = threadIdx.x & 31;                               \
        const int slice = threadIdx.x >> 5;                              \
        __syncthreads();                                                 \
        sh[slice * 33 + lane] = v;                                       \
        __syncthreads();                                                 \
        if (slice == 0) {                                                \
            for (int s = 1; s < (int)(blockDim.x >> 5); ++s) {           \
                v = OP(v, sh[s * 33 + lane]);                            \
            }                                                            \
            sh[lane] = v;                                                \
        }                                                                \
        __syncthreads();                                                 \
        return sh[lane];                                                 \
    }
TC_SLICE_REDUCE_T(long long, tc_slice_sum, tc_add)
TC_SLICE_REDUCE_T(long long, tc_slice_max, tc_max)
TC_SLICE_REDUCE_T(long long, tc_slice_min, tc_min)
TC_SLICE_REDUCE(tc_slice_sum, tc_add)
TC_SLICE_REDUCE(tc_slice_max, tc_max)
TC_SLICE_REDUCE(tc_slice_min, tc_min)
// Single-pass row statistics for rows too long to keep in registers. The lane whose bit `o`
// is clear is always the left operand of a merge, so both lanes of a shuffle compute the
// same bits and every thread of a row ends with the same result.
// Online softmax: (m, s) = running max and sum of exp(x - m); a merge rescales to the
// larger max (`m == mn` keeps exp(-inf - -inf) out, so an all -inf side adds 0).
__device__ __forceinline__ void tc_softmax_merge(float& m, float& s, float m2, float s2) {
    const float mn = tc_max(m, m2);
    const float a = (m == mn) ? s : s * expf(m - mn);
    const float b = (m2 == mn) ? s2 : s2 * expf(m2 - mn);
    m = mn;
    s = a + b;
}
__device__ __forceinline__ void tc_warp_softmax(float& m, float& s) {
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        if (threadIdx.x & o) {
            const float m1 = m, s1 = s;
            m = m2;
            s = s2;
            tc_softmax_merge(m, s, m1, s1);
        } else {
            tc_softmax_merge(m, s, m2, s2);
        }
    }
}
// `sh` holds 64 floats.
__device__ __forceinline__ void tc_block_softmax(float& m, float& s, float* sh) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    tc_warp_softmax(m, s);
    __syncthreads();
    if (lane == 0) { sh[warp] = m; sh[32 + warp] = s; }
    __syncthreads();
    if (warp == 0) {
        const bool live = lane < (int)(blockDim.x >> 5);
        float wm = live ? sh[lane] : __int_as_float(0xff800000);
        float ws = live ? sh[32 + lane] : 0.0f;
        tc_warp_softmax(wm, ws);
        if (lane == 0) { sh[0] = wm; sh[32] = ws; }
    }
    __syncthreads();
    m = sh[0];
    s = sh[32];
}
// Welford: (n, mean, m2) = count, mean and sum of squared deviations of the values seen;
// merged by Chan et al.'s formula.
__device__ __forceinline__ void tc_welford_merge(float& n, float& mean, float& m2, float nb, float meanb, float m2b) {
    if (nb == 0.0f) return;
    if (n == 0.0f) { n = nb; mean = meanb; m2 = m2b; return; }
    const float nn = n + nb;
    const float d = meanb - mean;
    const float f = nb / nn;
    mean = mean + d * f;
    m2 = m2 + m2b + d * d * n * f;
    n = nn;
}
__device__ __forceinline__ void tc_warp_welford(float& n, float& mean, float& m2) {
    for (int o = 16; o > 0; o >>= 1) {
        const float n2 = __shfl_xor_sync(0xffffffffu, n, o);
        const float mean2 = __shfl_xor_sync(0xffffffffu, mean, o);
        const float m22 = __shfl_xor_sync(0xffffffffu, m2, o);
        if (threadIdx.x & o) {
            const float n1 = n, mean1 = mean, m21 = m2;
            n = n2;
            mean = mean2;
            m2 = m22;
            tc_welford_merge(n, mean, m2, n1, mean1, m21);
        } else {
            tc_welford_merge(n, mean, m2, n2, mean2, m22);
        }
    }
}
// `sh` holds 96 floats.
__device__ __forceinline__ void tc_block_welford(float& n, float& mean, float& m2, float* sh) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    tc_warp_welford(n, mean, m2);
    __syncthreads();
    if (lane == 0) { sh[warp] = n; sh[32 + warp] = mean; sh[64 + warp] = m2; }
    __syncthreads();
    if (warp == 0) {
        const bool live = lane < (int)(blockDim.x >> 5);
        float wn = live ? sh[lane] : 0.0f;
        float wmean = live ? sh[32 + lane] : 0.0f;
        float wm2 = live ? sh[64 + lane] : 0.0f;
        tc_warp_welford(wn, wmean, wm2);
        if (lane == 0) { sh[0] = wn; sh[32] = wmean; sh[64] = wm2; }
    }
    __syncthreads();
    n = sh[0];
    mean = sh[32];
    m2 = sh[64];
}
// argmax/argmin across the threads of a row: each thread holds (v, j), the first best of
// the elements it walked (j < 0: none). Whether (v2, j2) beats (v, j): NaN above every
// number, of equal values (or two NaNs) the smaller position (ir::eval::arg_better). A
// total order on distinct positions, so both lanes of a shuffle pick the same pair and the
// result is the same whatever the tree: deterministic.
__device__ __forceinline__ bool tc_is_nan(float v) { return v != v; }
__device__ __forceinline__ bool tc_is_nan(long long) { return false; }
template <bool MAX, typename T>
__device__ __forceinline__ bool tc_arg_takes(T v, long long j, T v2, long long j2) {
    if (j2 < 0) return false;
    if (j < 0) return true;
    const bool n = tc_is_nan(v), n2 = tc_is_nan(v2);
    if (n || n2) return n2 && (!n || j2 < j);
    if (v2 == v) return j2 < j;
    return MAX ? v2 > v : v2 < v;
}
template <bool MAX, typename T>
__device__ __forceinline__ void tc_warp_arg(T& v, long long& j) {
    for (int o = 16; o > 0; o >>= 1) {
        const T v2 = __shfl_xor_sync(0xffffffffu, v, o);
        const long long j2 = __shfl_xor_sync(0xffffffffu, j, o);
        if (tc_arg_takes<MAX>(v, j, v2, j2)) { v = v2; j = j2; }
    }
}
// `shv` and `shj` hold 32 entries each.
template <bool MAX, typename T>
__device__ __forceinline__ void tc_block_arg(T& v, long long& j, T* shv, long long* shj) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    tc_warp_arg<MAX>(v, j);
    __syncthreads();
    if (lane == 0) { shv[warp] = v; shj[warp] = j; }
    __syncthreads();
    if (warp == 0) {
        const bool live = lane < (int)(blockDim.x >> 5);
        T wv = live ? shv[lane] : v;
        long long wj = live ? shj[lane] : -1;
        tc_warp_arg<MAX>(wv, wj);
        if (lane == 0) { shv[0] = wv; shj[0] = wj; }
    }
    __syncthreads();
    v = shv[0];
    j = shj[0];
}
// Lane l of every warp on row l (as TC_SLICE_REDUCE); `shv` and `shj` hold 33 * 32.
template <bool MAX, typename T>
__device__ __forceinline__ void tc_slice_arg(T& v, long long& j, T* shv, long long* shj) {
    const int lane = threadIdx.x & 31;
    const int slice = threadIdx.x >> 5;
    __syncthreads();
    shv[slice * 33 + lane] = v;
    shj[slice * 33 + lane] = j;
    __syncthreads();
    if (slice == 0) {
        for (int s = 1; s < (int)(blockDim.x >> 5); ++s) {
            const T v2 = shv[s * 33 + lane];
            const long long j2 = shj[s * 33 + lane];
            if (tc_arg_takes<MAX>(v, j, v2, j2)) { v = v2; j = j2; }
        }
        shv[lane] = v;
        shj[lane] = j;
    }
    __syncthreads();
    v = shv[lane];
    j = shj[lane];
}
// Inclusive scans of one tile of a row (a cumsum whose row a warp or a block shares):
// `p` = the sum of x over this thread and the ones before it, `t` = the tile's total, the
// same in every thread. A butterfly (lane l adds its partner group's total when bit `o` of
// l is set), so only xor shuffles; a fixed order of additions: deterministic.
__device__ __forceinline__ float tc_scan_add(float a, float b) { return a + b; }
__device__ __forceinline__ long long tc_scan_add(long long a, long long b) { return tc_iadd(a, b); }
template <typename T>
__device__ __forceinline__ void tc_warp_scan(T x, T& p, T& t) {
    p = x;
    t = x;
    for (int o = 1; o < 32; o <<= 1) {
        const T y = __shfl_xor_sync(0xffffffffu, t, o);
        if (threadIdx.x & o) p = tc_scan_add(y, p);
        t = (threadIdx.x & o) ? tc_scan_add(y, t) : tc_scan_add(t, y);
    }
}
// `sh` holds 32 entries; every thread adds the warp totals in the same order.
template <typename T>
__device__ __forceinline__ void tc_block_scan(T x, T& p, T& t, T* sh) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    T wp, wt;
    tc_warp_scan(x, wp, wt);
    __syncthreads();
    if (lane == 0) sh[warp] = wt;
    __syncthreads();
    T before = (T)0, all = (T)0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) {
        const T s = sh[w];
        if (w < warp) before = tc_scan_add(before, s);
        all = tc_scan_add(all, s);
    }
    p = tc_scan_add(before, wp);
    t = all;
}
// ---- end of prelude ----
