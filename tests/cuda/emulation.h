// Just enough of CUDA, in plain C++, to run kernels/cuda/isodose.cu on a CPU: every block and thread of a
// launch runs in turn, so atomics are plain read-modify-writes. It checks the kernels' arithmetic and
// indexing against the NumPy reference without a GPU; it cannot show races.
//
// A kernel that synchronises its threads (__syncthreads, shared memory, warp intrinsics: the variants of
// cell_histograms_kernel) runs in a cooperative launch instead: each thread of a block is a coroutine (ucontext)
// that runs until it reaches a barrier or a warp intrinsic, and a scheduler resumes the threads when every thread
// the barrier or the intrinsic's mask names has reached it, as the hardware's lockstep would. Blocks run in turn,
// so a __shared__ variable is one static variable, which each block sets up as it would on a GPU.
#pragma once
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

struct emulated_dim3 {
    unsigned x = 0, y = 0, z = 0;
};
static emulated_dim3 blockIdx, threadIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)

static inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
    unsigned long long old = *address;
    *address = old + value;
    return old;
}
static inline unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
    unsigned long long old = *address;
    if (value < old) *address = value;
    return old;
}
static inline unsigned long long atomicMax(unsigned long long* address, unsigned long long value) {
    unsigned long long old = *address;
    if (value > old) *address = value;
    return old;
}
static inline long long __double_as_longlong(double value) {
    long long bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}
static inline double __longlong_as_double(long long bits) {
    double value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

// ---- cooperative launches ---------------------------------------------------------------------------------
#define __shared__ static
#define EMULATED_MAX_THREADS 1024
#define EMULATED_STACK_BYTES (64 * 1024)

enum emulated_state { EMULATED_READY, EMULATED_AT_BARRIER, EMULATED_AT_WARP_OP, EMULATED_DONE };
enum emulated_op { EMULATED_MATCH_ANY, EMULATED_SHUFFLE };

struct emulated_thread {
    ucontext_t context;
    emulated_state state;
    emulated_op op;
    unsigned mask;
    unsigned long long value, result;
    int source;
};

static struct {
    bool active = false;
    unsigned current = 0;
    ucontext_t scheduler;
    emulated_thread threads[EMULATED_MAX_THREADS];
    char* stacks = nullptr;
    void (*body)(void*) = nullptr;
    void* argument = nullptr;
} emulated_block;

[[noreturn]] static inline void emulated_fail(const char* what) {
    fprintf(stderr, "emulated CUDA: %s (block %u, thread %u)\n", what, blockIdx.x, threadIdx.x);
    abort();
}

// The running thread waits at a barrier or a warp intrinsic until the scheduler resumes it.
static inline void emulated_wait(emulated_state state) {
    if (!emulated_block.active) emulated_fail("__syncthreads or a warp intrinsic outside a cooperative launch");
    emulated_thread& self = emulated_block.threads[emulated_block.current];
    self.state = state;
    swapcontext(&self.context, &emulated_block.scheduler);
}

static inline void __syncthreads() { emulated_wait(EMULATED_AT_BARRIER); }

static inline unsigned long long emulated_warp_op(emulated_op op, unsigned mask, unsigned long long value,
                                                  int source) {
    unsigned lane = threadIdx.x & 31;
    if (!(mask >> lane & 1u)) emulated_fail("a warp intrinsic whose mask leaves out the calling lane");
    emulated_thread& self = emulated_block.threads[emulated_block.current];
    self.op = op;
    self.mask = mask;
    self.value = value;
    self.source = source;
    emulated_wait(EMULATED_AT_WARP_OP);
    return emulated_block.threads[emulated_block.current].result;
}

static inline unsigned __match_any_sync(unsigned mask, long long value) {
    return (unsigned)emulated_warp_op(EMULATED_MATCH_ANY, mask, (unsigned long long)value, 0);
}
static inline long long __shfl_sync(unsigned mask, long long value, int source) {
    return (long long)emulated_warp_op(EMULATED_SHUFFLE, mask, (unsigned long long)value, source);
}
static inline unsigned long long __shfl_sync(unsigned mask, unsigned long long value, int source) {
    return emulated_warp_op(EMULATED_SHUFFLE, mask, value, source);
}
static inline int __ffs(unsigned x) { return x ? __builtin_ctz(x) + 1 : 0; }

static void emulated_entry() {
    emulated_block.body(emulated_block.argument);
    emulated_block.threads[emulated_block.current].state = EMULATED_DONE;
    // returning resumes the scheduler (uc_link)
}

// A warp intrinsic all of whose mask's lanes wait at it, with the same mask, is done: each lane gets its result.
static inline bool emulated_resolve_warp_op(unsigned block, unsigned t) {
    emulated_thread* threads = emulated_block.threads;
    unsigned base = t & ~31u, mask = threads[t].mask;
    for (unsigned lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        if (base + lane >= block || threads[base + lane].state == EMULATED_DONE)
            emulated_fail("a warp intrinsic whose mask names a lane that has exited");
        emulated_thread& other = threads[base + lane];
        if (other.state != EMULATED_AT_WARP_OP || other.mask != mask || other.op != threads[t].op) return false;
    }
    for (unsigned lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        emulated_thread& me = threads[base + lane];
        if (me.op == EMULATED_MATCH_ANY) {
            unsigned same = 0;
            for (unsigned k = 0; k < 32; ++k)
                if ((mask >> k & 1u) && threads[base + k].value == me.value) same |= 1u << k;
            me.result = same;
        } else {
            unsigned from = (unsigned)me.source & 31u;
            if (!(mask >> from & 1u)) emulated_fail("a shuffle from a lane outside its mask");
            me.result = threads[base + from].value;
        }
    }
    for (unsigned lane = 0; lane < 32; ++lane)
        if (mask >> lane & 1u) threads[base + lane].state = EMULATED_READY;
    return true;
}

// Run body(argument) as every thread of one block, cooperatively (see the top of the file).
static inline void emulated_cooperative_block(unsigned block, void (*body)(void*), void* argument) {
    if (block > EMULATED_MAX_THREADS) emulated_fail("a block larger than the emulation holds");
    if (!emulated_block.stacks) emulated_block.stacks = (char*)malloc((size_t)EMULATED_MAX_THREADS * EMULATED_STACK_BYTES);
    emulated_block.body = body;
    emulated_block.argument = argument;
    emulated_block.active = true;
    for (unsigned t = 0; t < block; ++t) {
        emulated_thread& thread = emulated_block.threads[t];
        getcontext(&thread.context);
        thread.context.uc_stack.ss_sp = emulated_block.stacks + (size_t)t * EMULATED_STACK_BYTES;
        thread.context.uc_stack.ss_size = EMULATED_STACK_BYTES;
        thread.context.uc_link = &emulated_block.scheduler;
        makecontext(&thread.context, emulated_entry, 0);
        thread.state = EMULATED_READY;
    }
    for (;;) {
        bool any_waiting = false;
        for (unsigned t = 0; t < block; ++t) {
            if (emulated_block.threads[t].state != EMULATED_READY) continue;
            emulated_block.current = t;
            threadIdx.x = t;
            swapcontext(&emulated_block.scheduler, &emulated_block.threads[t].context);
        }
        bool resolved = false, all_at_barrier = true;
        for (unsigned t = 0; t < block; ++t) {
            emulated_state state = emulated_block.threads[t].state;
            if (state == EMULATED_DONE) continue;
            any_waiting = true;
            if (state == EMULATED_AT_WARP_OP) {
                all_at_barrier = false;
                resolved |= emulated_resolve_warp_op(block, t);
            }
        }
        if (!any_waiting) break;
        if (resolved) continue;
        if (!all_at_barrier) {
            threadIdx.x = 0;
            emulated_fail("threads wait at warp intrinsics that can never complete");
        }
        for (unsigned t = 0; t < block; ++t)  // every thread still running is at the barrier: release it
            if (emulated_block.threads[t].state == EMULATED_AT_BARRIER) emulated_block.threads[t].state = EMULATED_READY;
    }
    emulated_block.active = false;
}

// A launch whose threads synchronise: `call` runs as every thread of each block, cooperatively.
#define EMULATE_COOPERATIVE_LAUNCH(grid, block, call)                                      \
    do {                                                                                   \
        gridDim.x = (grid);                                                                \
        blockDim.x = (block);                                                              \
        auto emulated_body = [&]() { call; };                                              \
        using emulated_body_type = decltype(emulated_body);                                \
        for (unsigned b = 0; b < (grid); ++b) {                                            \
            blockIdx.x = b;                                                                \
            emulated_cooperative_block(                                                    \
                (block), [](void* body) { (*(emulated_body_type*)body)(); }, &emulated_body); \
        }                                                                                  \
    } while (0)

#define EMULATE_LAUNCH(grid, block, call)            \
    do {                                             \
        gridDim.x = (grid);                          \
        blockDim.x = (block);                        \
        for (unsigned b = 0; b < (grid); ++b) {      \
            blockIdx.x = b;                          \
            for (unsigned t = 0; t < (block); ++t) { \
                threadIdx.x = t;                     \
                call;                                \
            }                                        \
        }                                            \
    } while (0)
