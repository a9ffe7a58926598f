// ---- tc CUDA emulation: the execution model tc's generated CUDA C relies on, on the host ----
// Compiled by the host C++ compiler in front of tc's prelude (less its PTX part) and the
// kernels of one plan; `tc_runtime::cuda::emu` writes the rest (the launch sequence and
// `main`). One fiber per CUDA thread, the blocks of a grid one after another. Barriers
// (`__syncthreads`) and warp shuffles (`__shfl_xor_sync`) are the only scheduling points,
// so a kernel that needs another synchronisation to be correct gives different results in
// forward and reverse order; a block whose threads cannot all reach the same barrier is
// reported (as compute-sanitizer's synccheck would), and every allocation ends at a guard
// page, so a read or write past its end stops the run naming the kernel, block, thread and
// allocation (as memcheck would). The run fails with exit code 3 and a line starting
// `tc-emu:` on stderr.

#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <utility>

// ---- what a kernel sees

struct uint3 {
    unsigned int x, y, z;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned int x, y;
};
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
};

enum TcState { TC_RUNNABLE, TC_AT_SYNC, TC_AT_SHUFFLE, TC_DONE };

struct TcFiber {
    ucontext_t ctx;
    uint3 tid;
    int linear;
    TcState state;
};

static TcFiber* tc_cur;  // the fiber running now
static uint3 tc_block_idx, tc_grid_dim, tc_block_dim;
static int tc_threads;  // threads in a block

#define threadIdx (tc_cur->tid)
#define blockIdx tc_block_idx
#define blockDim tc_block_dim
#define gridDim tc_grid_dim
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one block runs at a time, so a static is the block's own
#define __constant__ static  // a table the kernel only reads

static void tc_fail(const char* fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
static inline float __uint_as_float(unsigned int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
static inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, 4);
    return i;
}
static inline unsigned int __float_as_uint(float f) {
    unsigned int i;
    memcpy(&i, &f, 4);
    return i;
}

// The PTX `cvt.f32.f16` / `cvt.rn.f16.f32` of the device prelude: IEEE binary16, round to
// nearest even (the compiler's _Float16 conversions).
static inline float tc_f16_to_f32(unsigned short h) {
    _Float16 f;
    memcpy(&f, &h, 2);
    return (float)f;
}
static inline unsigned short tc_f32_to_f16(float x) {
    _Float16 f = (_Float16)x;
    unsigned short h;
    memcpy(&h, &f, 2);
    return h;
}
// The prelude's `rcp.approx.ftz.f32`: here the correctly rounded reciprocal (which the
// device's refinement step in `tc_recip_ge1` leaves unchanged), flushed below 2^-126 as
// `ftz` flushes. The device's approximation is within the Newton step's reach; its last
// bit is the device's.
static inline float tc_rcp_approx(float d) {
    float r = 1.0f / d;
    return (r != 0.0f && r < 1.17549435e-38f && r > -1.17549435e-38f) ? 0.0f * r : r;
}

// The prelude's `cvt.rn.bf16.f32`: round to nearest, ties to even, in integer arithmetic (a
// NaN stays a quiet NaN).
static inline unsigned short tc_f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

static ucontext_t tc_scheduler;
static unsigned long long tc_block_epoch;  // counts blocks run, across launches

// Shared memory is undefined when a block starts: the first thread of each block to reach a
// `__shared__` declaration fills the array with NaN bytes (the emulation adds this call
// after each declaration), so a read before any write shows in the results.
static inline void tc_poison_shared(void* p, unsigned long long bytes, unsigned long long* epoch) {
    if (*epoch != tc_block_epoch) {
        *epoch = tc_block_epoch;
        memset(p, 0xff, bytes);
    }
}
static float tc_lanes[2][1024];  // shuffle exchange, double-buffered by phase
static long long tc_ilanes[2][1024];  // the same for 64-bit integers
static int tc_warp_phase[32];

static inline void tc_yield(TcState why) {
    TcFiber* me = tc_cur;
    me->state = why;
    swapcontext(&me->ctx, &tc_scheduler);
}

static inline void __syncthreads() { tc_yield(TC_AT_SYNC); }

static inline float __shfl_xor_sync(unsigned int mask, float v, int lane_mask) {
    if (mask != 0xffffffffu) tc_fail("__shfl_xor_sync with a partial mask (0x%x) is not emulated", mask);
    if (tc_threads % 32 != 0) tc_fail("__shfl_xor_sync in a block of %d threads: its last warp is partial", tc_threads);
    if (lane_mask < 0 || lane_mask > 31) tc_fail("__shfl_xor_sync lane mask %d outside the warp", lane_mask);
    const int me = tc_cur->linear;
    const int warp = me >> 5;
    const int phase = tc_warp_phase[warp] & 1;
    tc_lanes[phase][me] = v;
    tc_yield(TC_AT_SHUFFLE);
    return tc_lanes[phase][(warp << 5) | ((me & 31) ^ lane_mask)];
}

// The 64-bit integer overload (integer and bool reductions hold `long long`).
static inline long long __shfl_xor_sync(unsigned int mask, long long v, int lane_mask) {
    if (mask != 0xffffffffu) tc_fail("__shfl_xor_sync with a partial mask (0x%x) is not emulated", mask);
    if (tc_threads % 32 != 0) tc_fail("__shfl_xor_sync in a block of %d threads: its last warp is partial", tc_threads);
    if (lane_mask < 0 || lane_mask > 31) tc_fail("__shfl_xor_sync lane mask %d outside the warp", lane_mask);
    const int me = tc_cur->linear;
    const int warp = me >> 5;
    const int phase = tc_warp_phase[warp] & 1;
    tc_ilanes[phase][me] = v;
    tc_yield(TC_AT_SHUFFLE);
    return tc_ilanes[phase][(warp << 5) | ((me & 31) ^ lane_mask)];
}

// ---- the host side: allocations at guard pages, launches, cuBLAS's GEMM

struct TcAlloc {
    const char* name;
    unsigned long long bytes;
    unsigned char* base;  // filled in by tc_allocate
    unsigned char* end;
};

static const char* tc_kernel = "(none)";  // the kernel running now, for reports
static TcAlloc* tc_allocs_ref;
static int tc_alloc_count;

static void tc_context(FILE* f) {
    fprintf(f, "tc-emu: in kernel %s", tc_kernel);
    if (tc_cur != nullptr) {
        fprintf(f, ", block (%u, %u, %u), thread (%u, %u, %u)", tc_block_idx.x, tc_block_idx.y, tc_block_idx.z,
                tc_cur->tid.x, tc_cur->tid.y, tc_cur->tid.z);
    }
    fprintf(f, "\n");
}

#include <stdarg.h>
static void tc_fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tc-emu: error: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    tc_context(stderr);
    fflush(stderr);
    _exit(3);
}

static void tc_on_signal(int sig, siginfo_t* info, void*) {
    // Async-signal-safe enough for a process that is about to end.
    unsigned char* at = (unsigned char*)info->si_addr;
    fprintf(stderr, "tc-emu: error: signal %d (%s)", sig, sig == SIGSEGV ? "invalid memory access" : strsignal(sig));
    if (sig == SIGSEGV || sig == SIGBUS) {
        fprintf(stderr, " at address %p", (void*)at);
        for (int i = 0; i < tc_alloc_count; ++i) {
            const TcAlloc& a = tc_allocs_ref[i];
            if (a.base != nullptr && at >= a.end && at < a.end + 65536) {
                fprintf(stderr, ": %llu bytes past the end of %s (%llu bytes)", (unsigned long long)(at - a.end),
                        a.name, a.bytes);
            } else if (a.base != nullptr && at < a.base && at + 65536 >= a.base) {
                fprintf(stderr, ": %llu bytes before the start of %s", (unsigned long long)(a.base - at), a.name);
            }
        }
    }
    fprintf(stderr, "\n");
    tc_context(stderr);
    fflush(stderr);
    _exit(3);
}

static const size_t TC_PAGE = 4096;
static const size_t TC_STACK = 256 * 1024;

// Each allocation is placed so that it ends, 16-byte aligned (what vector accesses need), right
// before an inaccessible page, and a page before it is inaccessible too.
static void tc_allocate(TcAlloc* allocs, int count) {
    tc_allocs_ref = allocs;
    tc_alloc_count = count;
    for (int i = 0; i < count; ++i) {
        TcAlloc& a = allocs[i];
        if (a.bytes == 0) continue;
        const size_t padded = (a.bytes + 15) / 16 * 16;
        const size_t body = (padded + TC_PAGE - 1) / TC_PAGE * TC_PAGE;
        unsigned char* m = (unsigned char*)mmap(nullptr, body + 2 * TC_PAGE, PROT_READ | PROT_WRITE,
                                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) tc_fail("cannot map %llu bytes for %s", a.bytes, a.name);
        mprotect(m, TC_PAGE, PROT_NONE);
        mprotect(m + TC_PAGE + body, TC_PAGE, PROT_NONE);
        a.base = m + TC_PAGE + body - padded;
        a.end = a.base + padded;
        memset(a.base, 0xff, padded);  // NaN in every float format: an unwritten read shows
    }
}

static TcFiber tc_fibers[1024];
static unsigned char* tc_stacks;
static int tc_reverse;  // run blocks, and threads within a block, in reverse order

static void (*tc_thunk)(void**);
static void** tc_args;

static void tc_fiber_main() {
    tc_thunk(tc_args);
    tc_cur->state = TC_DONE;
    swapcontext(&tc_cur->ctx, &tc_scheduler);
    tc_fail("a finished thread was resumed");
}

static const char* tc_state_name(TcState s) {
    switch (s) {
        case TC_RUNNABLE: return "running";
        case TC_AT_SYNC: return "at __syncthreads";
        case TC_AT_SHUFFLE: return "at __shfl_xor_sync";
        case TC_DONE: return "finished";
    }
    return "?";
}

static void tc_run_block() {
    const int n = tc_threads;
    ++tc_block_epoch;
    for (int i = 0; i < n; ++i) {
        TcFiber& f = tc_fibers[i];
        f.linear = i;
        f.tid.x = i % tc_block_dim.x;
        f.tid.y = (i / tc_block_dim.x) % tc_block_dim.y;
        f.tid.z = i / (tc_block_dim.x * tc_block_dim.y);
        f.state = TC_RUNNABLE;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = tc_stacks + (size_t)i * (TC_STACK + TC_PAGE) + TC_PAGE;
        f.ctx.uc_stack.ss_size = TC_STACK;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, tc_fiber_main, 0);
    }
    for (int w = 0; w < 32; ++w) tc_warp_phase[w] = 0;
    for (;;) {
        for (int k = 0; k < n; ++k) {
            const int i = tc_reverse ? n - 1 - k : k;
            if (tc_fibers[i].state == TC_RUNNABLE) {
                tc_cur = &tc_fibers[i];
                swapcontext(&tc_scheduler, &tc_cur->ctx);
            }
        }
        tc_cur = nullptr;
        // A warp whose every lane waits at a shuffle goes on.
        bool released = false;
        for (int w = 0; w * 32 < n; ++w) {
            const int lanes = n - w * 32 < 32 ? n - w * 32 : 32;
            int waiting = 0;
            for (int l = 0; l < lanes; ++l) waiting += tc_fibers[w * 32 + l].state == TC_AT_SHUFFLE;
            if (waiting == lanes) {
                for (int l = 0; l < lanes; ++l) tc_fibers[w * 32 + l].state = TC_RUNNABLE;
                tc_warp_phase[w] ^= 1;
                released = true;
            }
        }
        if (released) continue;
        int counts[4] = {0, 0, 0, 0};
        for (int i = 0; i < n; ++i) counts[tc_fibers[i].state]++;
        if (counts[TC_DONE] == n) return;
        if (counts[TC_AT_SYNC] == n) {
            for (int i = 0; i < n; ++i) tc_fibers[i].state = TC_RUNNABLE;
            continue;
        }
        // Nothing can go on: the block's threads wait at different barriers.
        fprintf(stderr,
                "tc-emu: error: barrier divergence in block (%u, %u, %u): of %d threads, %d wait at "
                "__syncthreads, %d at __shfl_xor_sync and %d have finished\n",
                tc_block_idx.x, tc_block_idx.y, tc_block_idx.z, n, counts[TC_AT_SYNC], counts[TC_AT_SHUFFLE],
                counts[TC_DONE]);
        for (int i = 0; i < n; ++i) {
            if (i == 0 || tc_fibers[i].state != tc_fibers[i - 1].state) {
                int j = i;
                while (j + 1 < n && tc_fibers[j + 1].state == tc_fibers[i].state) ++j;
                fprintf(stderr, "tc-emu:   threads %d..%d %s\n", i, j, tc_state_name(tc_fibers[i].state));
            }
        }
        tc_fail("a __syncthreads or shuffle is not reached by every thread of the block");
    }
}

// Launches `thunk` (the kernel with its arguments unpacked) over the grid, as
// cuLaunchKernel would, after the checks the driver makes.
static void tc_launch(const char* name, void (*thunk)(void**), unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                      unsigned by, unsigned bz, unsigned shared_bytes, unsigned launch_bound, void** args) {
    tc_kernel = name;
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (gx == 0 || gy == 0 || gz == 0 || threads == 0) tc_fail("launch of an empty grid or block");
    if (threads > 1024 || bz > 64) tc_fail("block of %llu threads: more than the device allows", threads);
    if (launch_bound != 0 && threads > launch_bound)
        tc_fail("block of %llu threads exceeds the kernel's __launch_bounds__(%u)", threads, launch_bound);
    if (gx > 2147483647u || gy > 65535u || gz > 65535u) tc_fail("grid (%u, %u, %u) beyond the device's limits", gx, gy, gz);
    if (shared_bytes != 0) tc_fail("dynamic shared memory (%u bytes) is not emulated", shared_bytes);
    tc_thunk = thunk;
    tc_args = args;
    tc_grid_dim = {gx, gy, gz};
    tc_block_dim = {bx, by, bz};
    tc_threads = (int)threads;
    const unsigned long long blocks = (unsigned long long)gx * gy * gz;
    for (unsigned long long k = 0; k < blocks; ++k) {
        const unsigned long long b = tc_reverse ? blocks - 1 - k : k;
        tc_block_idx = {(unsigned)(b % gx), (unsigned)((b / gx) % gy), (unsigned)(b / ((unsigned long long)gx * gy))};
        tc_run_block();
    }
    tc_kernel = "(none)";
}

template <class... A, size_t... I>
static void tc_call_with(void (*f)(A...), void** a, std::index_sequence<I...>) {
    f(((A)a[I])...);
}
template <class... A>
static void tc_call(void (*f)(A...), void** a) {
    tc_call_with(f, a, std::index_sequence_for<A...>{});
}

// ---- cuBLAS: cublasGemmStridedBatchedEx with CUBLAS_COMPUTE_32F, alpha 1, beta 0 or 1

enum TcType { TC_F32 = 0, TC_F16 = 1, TC_BF16 = 2 };

static inline float tc_bf16_value(unsigned short h) { return __uint_as_float(((unsigned int)h) << 16); }
static inline unsigned short tc_bf16_bits(float f);

static inline float tc_read(const unsigned char* p, int type, long long i) {
    switch (type) {
        case TC_F32: {
            float f;
            memcpy(&f, p + 4 * i, 4);
            return f;
        }
        case TC_F16: {
            unsigned short h;
            memcpy(&h, p + 2 * i, 2);
            return tc_f16_to_f32(h);
        }
        default: {
            unsigned short h;
            memcpy(&h, p + 2 * i, 2);
            return tc_bf16_value(h);
        }
    }
}

static inline void tc_write(unsigned char* p, int type, long long i, float v) {
    switch (type) {
        case TC_F32: memcpy(p + 4 * i, &v, 4); break;
        case TC_F16: {
            unsigned short h = tc_f32_to_f16(v);
            memcpy(p + 2 * i, &h, 2);
            break;
        }
        default: {
            unsigned short h = tc_bf16_bits(v);
            memcpy(p + 2 * i, &h, 2);
            break;
        }
    }
}

static inline unsigned short tc_bf16_bits(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// The residual of a `beta = 1` GEMM: C holds x first. The same address is the plan's in-place
// case (nothing to copy); an overlap that is not the same address is a planner bug; else
// the bytes are copied, as the executor's cuMemcpyDtoDAsync does.
static void tc_residual(const unsigned char* x, unsigned char* c, unsigned long long x_bytes,
                        unsigned long long c_bytes) {
    tc_kernel = "residual copy";
    if (x == c) {
        tc_kernel = "(none)";
        return;
    }
    if (x < c + c_bytes && c < x + x_bytes) tc_fail("the residual overlaps the product without being in place");
    memcpy(c, x, c_bytes);
    tc_kernel = "(none)";
}

// Column-major C = op(A)·op(B) + beta·C per batch (beta 0 or 1), as cuBLAS defines it: the
// sum in f32 and one rounding to C's type; after cuBLAS's own argument checks (a call it
// would refuse with CUBLAS_STATUS_INVALID_VALUE stops the run). With beta 0, C is not read.
static void tc_gemm(int trans_a, int trans_b, int m, int n, int k, const void* a, int a_type, long long lda,
                    long long stride_a, const void* b, int b_type, long long ldb, long long stride_b, void* c,
                    int c_type, long long ldc, long long stride_c, int batch, int beta) {
    tc_kernel = "cublasGemmStridedBatchedEx";
    const long long a_rows = trans_a ? k : m, b_rows = trans_b ? n : k;
    if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < (a_rows > 1 ? a_rows : 1) ||
        ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1))
        tc_fail("cuBLAS would refuse this call (CUBLAS_STATUS_INVALID_VALUE): m %d n %d k %d lda %lld ldb %lld ldc %lld",
                m, n, k, lda, ldb, ldc);
    const unsigned char* pa = (const unsigned char*)a;
    const unsigned char* pb = (const unsigned char*)b;
    unsigned char* pc = (unsigned char*)c;
    for (int p = 0; p < batch; ++p) {
        for (long long j = 0; j < n; ++j) {
            for (long long i = 0; i < m; ++i) {
                float acc = 0.0f;
                for (long long l = 0; l < k; ++l) {
                    const float av = tc_read(pa, a_type, p * stride_a + (trans_a ? l + i * lda : i + l * lda));
                    const float bv = tc_read(pb, b_type, p * stride_b + (trans_b ? j + l * ldb : l + j * ldb));
                    acc += av * bv;
                }
                const long long at = p * stride_c + i + j * ldc;
                tc_write(pc, c_type, at, beta ? acc + tc_read(pc, c_type, at) : acc);
            }
        }
    }
    tc_kernel = "(none)";
}

// ---- set-up, shared by every program

static void tc_start(TcAlloc* allocs, int count) {
    static unsigned char alt[1 << 16];
    stack_t ss;
    ss.ss_sp = alt;
    ss.ss_size = sizeof alt;
    ss.ss_flags = 0;
    sigaltstack(&ss, nullptr);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = tc_on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
    sigaction(SIGABRT, &sa, nullptr);
    sigaction(SIGFPE, &sa, nullptr);
    const char* order = getenv("TC_EMU_ORDER");
    tc_reverse = order != nullptr && strcmp(order, "reverse") == 0;
    // Fiber stacks, each above an inaccessible page.
    const size_t total = 1024 * (TC_STACK + TC_PAGE);
    tc_stacks = (unsigned char*)mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                                     -1, 0);
    if (tc_stacks == MAP_FAILED) tc_fail("cannot map the thread stacks");
    for (int i = 0; i < 1024; ++i) mprotect(tc_stacks + (size_t)i * (TC_STACK + TC_PAGE), TC_PAGE, PROT_NONE);
    tc_allocate(allocs, count);
}

static void tc_read_file(const char* dir, const char* file, unsigned char* dst, unsigned long long bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE* f = fopen(path, "rb");
    if (f == nullptr) tc_fail("cannot open %s", path);
    if (bytes != 0 && fread(dst, 1, bytes, f) != bytes) tc_fail("%s is shorter than %llu bytes", path, bytes);
    fclose(f);
}

static void tc_write_file(const char* dir, const char* file, const unsigned char* src, unsigned long long bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE* f = fopen(path, "wb");
    if (f == nullptr) tc_fail("cannot create %s", path);
    if (bytes != 0 && fwrite(src, 1, bytes, f) != bytes) tc_fail("cannot write %s", path);
    fclose(f);
}
// ---- what the emulation counts

// `TC_KEY_TILE()`: an attention kernel (codegen::attention) computes a tile of keys; the
// device's definition is empty. Counted once per block (by its first thread: every thread of
// the block walks the same tiles), under the kernel running now, and written to
// `key_tiles.txt` (`kernel count` lines) after the run.
struct TcCount {
    const char* kernel;
    unsigned long long count;
};
static TcCount tc_key_tiles[256];
static int tc_key_tile_kernels;

static void tc_count_key_tile() {
    if (tc_cur == nullptr || tc_cur->linear != 0) return;
    for (int i = 0; i < tc_key_tile_kernels; ++i) {
        if (strcmp(tc_key_tiles[i].kernel, tc_kernel) == 0) {
            ++tc_key_tiles[i].count;
            return;
        }
    }
    if (tc_key_tile_kernels == 256) tc_fail("more than 256 kernels count key tiles");
    tc_key_tiles[tc_key_tile_kernels++] = {tc_kernel, 1};
}
#define TC_KEY_TILE() tc_count_key_tile()

static void tc_write_counts(const char* dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/key_tiles.txt", dir);
    FILE* f = fopen(path, "w");
    if (f == nullptr) tc_fail("cannot create %s", path);
    for (int i = 0; i < tc_key_tile_kernels; ++i) fprintf(f, "%s %llu\n", tc_key_tiles[i].kernel, tc_key_tiles[i].count);
    fclose(f);
}

// atomicMin on a 64-bit integer (the kernels' index checks): one block runs at a time and its
// fibers switch only at barriers and shuffles, so a plain read-modify-write is atomic here.
static inline long long atomicMin(long long* p, long long v) {
    const long long old = *p;
    if (v < old) *p = v;
    return old;
}
// ---- end of the emulation runtime ----
