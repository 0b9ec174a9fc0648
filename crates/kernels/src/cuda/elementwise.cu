// Element-wise kernels for mtanet-kernels (the residual join and the in-place optimizer
// updates), compiled at run time by NVRTC (crates/kernels/src/cuda/nvrtc.rs). Same formulas, in
// the same f32 operation order, as crates/kernels/src/residual.rs and optimizer_step.rs; the
// `_rn` intrinsics keep NVRTC from contracting a multiply and an add into an FMA, so the results
// are bit-identical to the CPU's. All operands are dense (the Rust side packs strided ones).

typedef long long i64;

#define GRID_STRIDE(i, n)                                                 \
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < (n);    \
         i += (i64)blockDim.x * gridDim.x)

// y = max(0, a + b).
extern "C" __global__ void mtanet_add_relu(const float* a, const float* b, float* y, i64 n) {
    GRID_STRIDE(i, n) { y[i] = fmaxf(__fadd_rn(a[i], b[i]), 0.0f); }
}

// out = g where y > 0, else 0.
extern "C" __global__ void mtanet_relu_mask(const float* y, const float* g, float* out, i64 n) {
    GRID_STRIDE(i, n) { out[i] = y[i] > 0.0f ? g[i] : 0.0f; }
}

// buf = keep * buf + add * d (or d^2 when squared), d = scale * grad + decay * param.
extern "C" __global__ void mtanet_opt_accumulate(float* buf, const float* grad, const float* param,
                                                 i64 n, float decay, float scale, float keep,
                                                 float add, int squared) {
    GRID_STRIDE(i, n) {
        float d = __fadd_rn(__fmul_rn(grad[i], scale), __fmul_rn(param[i], decay));
        if (squared) d = __fmul_rn(d, d);
        buf[i] = __fadd_rn(__fmul_rn(buf[i], keep), __fmul_rn(d, add));
    }
}

// param -= lr * buf.
extern "C" __global__ void mtanet_opt_sgd_apply(float* param, const float* buf, i64 n, float lr) {
    GRID_STRIDE(i, n) { param[i] = __fsub_rn(param[i], __fmul_rn(buf[i], lr)); }
}

// param -= step_size * m / (sqrt(v) / sqrt_bc2 + eps).
extern "C" __global__ void mtanet_opt_adam_apply(float* param, const float* m, const float* v,
                                                 i64 n, float step_size, float sqrt_bc2,
                                                 float eps) {
    GRID_STRIDE(i, n) {
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v[i]), sqrt_bc2), eps);
        param[i] = __fsub_rn(param[i], __fmul_rn(step_size, __fdiv_rn(m[i], denom)));
    }
}

// Sum of squares, deterministic (fixed grid, fixed per-thread order, fixed tree; no atomics):
// block b of a launch of SQ_BLOCKS blocks x 256 threads adds x[i]^2 in f64 for its grid-stride
// share of x, reduces its 256 partial sums in shared memory, and writes partial[b].
#define SQ_THREADS 256
extern "C" __global__ void mtanet_sum_squares_partial(const float* x, i64 n, double* partial) {
    __shared__ double s[SQ_THREADS];
    double acc = 0.0;
    GRID_STRIDE(i, n) {
        const double v = (double)x[i];
        acc = __dadd_rn(acc, __dmul_rn(v, v));
    }
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int k = SQ_THREADS / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) s[threadIdx.x] = __dadd_rn(s[threadIdx.x], s[threadIdx.x + k]);
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

// out[0] = the sum of partial[0..len], by one block of 256 threads: thread t adds the entries
// t, t + 256, ... in order, then the 256 sums are reduced in a fixed tree.
extern "C" __global__ void mtanet_sum_f64(const double* partial, i64 len, double* out) {
    __shared__ double s[SQ_THREADS];
    double acc = 0.0;
    for (i64 i = threadIdx.x; i < len; i += SQ_THREADS) acc = __dadd_rn(acc, partial[i]);
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int k = SQ_THREADS / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) s[threadIdx.x] = __dadd_rn(s[threadIdx.x], s[threadIdx.x + k]);
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = s[0];
}
