// ---- tc prelude: conversions, NaN-propagating min/max, warp and block reductions ----
// f16/bf16 values travel as their raw 16 bits (unsigned short); maths is in f32.
// No header is included, so NVRTC compiles this without an include path.

__device__ __forceinline__ float tc_f16_to_f32(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ unsigned short tc_f32_to_f16(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));  // round to nearest, ties to even
    return h;
}


// f32 -> bf16, round to nearest, ties to even: one `cvt.rn.bf16.f32` where the target has it
// (sm_80 and later), else the same rounding in integer arithmetic (a NaN stays a quiet NaN;
// which NaN is the hardware's choice).
__device__ __forceinline__ unsigned short tc_f32_to_bf16(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
#endif
}

// The approximate reciprocal `rcp.approx.ftz.f32` (one MUFU.RCP: within 1 ulp where 1/d is
// normal, 0 where it is not; 0 for ±inf, NaN for NaN). Only `tc_recip_ge1` uses it, and
// refines it.
__device__ __forceinline__ float tc_rcp_approx(float d) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
    return r;
}
