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

