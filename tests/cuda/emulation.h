// Just enough of CUDA, in plain C++, to run kernels/cuda/isodose.cu on a CPU: every block and thread of a
// launch runs in turn, so atomics are plain read-modify-writes. It checks the kernels' arithmetic and
// indexing against the NumPy reference without a GPU; it cannot show races.
#pragma once
#include <math.h>
#include <string.h>

struct emulated_dim3 {
    unsigned x = 0, y = 0, z = 0;
};
static emulated_dim3 blockIdx, threadIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__

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
