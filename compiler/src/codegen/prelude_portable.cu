__device__ __forceinline__ float tc_bf16_to_f32(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

__device__ __forceinline__ unsigned short tc_f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((u >> 16) | 0x0040u);  // NaN stays a (quiet) NaN
    }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    return (unsigned short)(u >> 16);
}

__device__ __forceinline__ float tc_round_f16(float f) { return tc_f16_to_f32(tc_f32_to_f16(f)); }
__device__ __forceinline__ float tc_round_bf16(float f) { return tc_bf16_to_f32(tc_f32_to_bf16(f)); }

// max/min that propagate NaN, as torch.maximum/torch.minimum and torch.max/torch.min do.
__device__ __forceinline__ float tc_max(float a, float b) { return (a != a || a > b) ? a : b; }
__device__ __forceinline__ float tc_min(float a, float b) { return (a != a || a < b) ? a : b; }
__device__ __forceinline__ float tc_add(float a, float b) { return a + b; }

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
TC_SLICE_REDUCE(tc_slice_sum, tc_add)
TC_SLICE_REDUCE(tc_slice_max, tc_max)
TC_SLICE_REDUCE(tc_slice_min, tc_min)
// ---- end of prelude ----
