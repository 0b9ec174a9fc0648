// BatchNorm (training) and channel-affine (eval BatchNorm) kernels for mtanet-kernels, compiled at
// run time by NVRTC (crates/kernels/src/cuda/nvrtc.rs). Semantics and summation order are those
// of the CPU code in crates/kernels/src/batch_norm_passes.rs:
// - a row is one (image, channel) map of `inner` values of a dense NCHW tensor;
// - per row, LANES = 16 f32 partial sums (lane l adds elements l, l + 16, ... of the whole
//   16-chunks, in order), combined in lane order in f64, then the tail added in f64 (`lane_sum`,
//   `gated_sums`);
// - per channel, the row totals added in image order in f64 (`block_moments`,
//   `block_gated_sums`).
// So the statistics are bit-identical to the CPU's, and so are both parameter gradients on maps
// of fewer than 16 or at least 64 values; between those (7x7, 4x4) the CPU backward runs its
// lanes on over the channel's images and combines them once per channel, which this file does
// not, so there they differ in rounding. Every result is the same on every run (no atomics). All mul/add pairs use the `_rn` intrinsics so that NVRTC's default
// `--fmad=true` cannot contract them into FMAs the CPU does not do.

typedef long long i64;

#define LANES 16
// Rows per block of the row-sum kernels: blockDim.x == LANES * ROWS_PER_BLOCK == 256.
#define ROWS_PER_BLOCK 16

// Per-row sums of `x` (rows of `inner` values): `f(v) = v`, or `(v - mean[row % c])^2` when
// `centred` (the variance pass). out[row] = the f64 total.
extern "C" __global__ void mtanet_bn_row_sums(const float* x, const float* mean, int centred,
                                              double* out, i64 rows, i64 c, i64 inner) {
    __shared__ float lanes[LANES * ROWS_PER_BLOCK];
    const int lane = threadIdx.x % LANES;
    const int local = threadIdx.x / LANES;
    const i64 full = inner / LANES * LANES;
    // Block-uniform loop (every thread of the block takes the same trips): __syncthreads is safe.
    for (i64 base = (i64)blockIdx.x * ROWS_PER_BLOCK; base < rows;
         base += (i64)gridDim.x * ROWS_PER_BLOCK) {
        const i64 row = base + local;
        float acc = 0.0f;
        float mu = 0.0f;
        const float* r = x + row * inner;
        if (row < rows) {
            if (centred) mu = mean[row % c];
            for (i64 j = lane; j < full; j += LANES) {
                float v = r[j];
                if (centred) {
                    float d = __fsub_rn(v, mu);
                    v = __fmul_rn(d, d);
                }
                acc = __fadd_rn(acc, v);
            }
        }
        lanes[threadIdx.x] = acc;
        __syncthreads();
        if (row < rows && lane == 0) {
            double total = 0.0;
            for (int l = 0; l < LANES; ++l) total = __dadd_rn(total, (double)lanes[threadIdx.x + l]);
            for (i64 j = full; j < inner; ++j) {
                float v = r[j];
                if (centred) {
                    float d = __fsub_rn(v, mu);
                    v = __fmul_rn(d, d);
                }
                total = __dadd_rn(total, (double)v);
            }
            out[row] = total;
        }
        __syncthreads();
    }
}

// Per channel: mean[ch] = (float)(sum over images of row_sums / m).
extern "C" __global__ void mtanet_bn_mean(const double* row_sums, float* mean, i64 n, i64 c,
                                          double m) {
    for (i64 ch = blockIdx.x * (i64)blockDim.x + threadIdx.x; ch < c;
         ch += (i64)blockDim.x * gridDim.x) {
        double s = 0.0;
        for (i64 i = 0; i < n; ++i) s = __dadd_rn(s, row_sums[i * c + ch]);
        mean[ch] = (float)__ddiv_rn(s, m);
    }
}

// Per channel, from the centred row sums of squares: the biased variance, 1/sqrt(var + eps)
// (in f64), and the folded affine `a = w * inv_std`, `shift = b - mean * a`. `stats` is the
// (3, c) block [mean; var; inv_std] (the mean written by `mtanet_bn_mean`), `affine` the (2, c)
// block [a; shift].
extern "C" __global__ void mtanet_bn_finalize(const double* row_sq, float* stats,
                                              const float* weight, const float* bias,
                                              float* affine, i64 n, i64 c, double m, double eps) {
    for (i64 ch = blockIdx.x * (i64)blockDim.x + threadIdx.x; ch < c;
         ch += (i64)blockDim.x * gridDim.x) {
        double s = 0.0;
        for (i64 i = 0; i < n; ++i) s = __dadd_rn(s, row_sq[i * c + ch]);
        float v = (float)__ddiv_rn(s, m);
        float is = (float)__ddiv_rn(1.0, __dsqrt_rn(__dadd_rn((double)v, eps)));
        float k = __fmul_rn(weight[ch], is);
        stats[c + ch] = v;
        stats[2 * c + ch] = is;
        affine[ch] = k;
        affine[c + ch] = __fsub_rn(bias[ch], __fmul_rn(stats[ch], k));
    }
}

// PyTorch's running average, in place: running[ch] = (float)(keep * running[ch] + take *
// batch[ch]) in f64, with keep = 1 - momentum and take = momentum * factor (factor = 1 for the
// mean, m / (m - 1) for the variance) computed on the host in f64, as the CPU update does.
extern "C" __global__ void mtanet_bn_running(float* running, const float* batch, i64 c,
                                             double keep, double take) {
    for (i64 ch = blockIdx.x * (i64)blockDim.x + threadIdx.x; ch < c;
         ch += (i64)blockDim.x * gridDim.x) {
        running[ch] = (float)__dadd_rn(__dmul_rn(keep, (double)running[ch]),
                                       __dmul_rn(take, (double)batch[ch]));
    }
}

// y = x * a[ch] + b[ch] (then max(0, .) when relu) over a dense (rows, inner) tensor.
extern "C" __global__ void mtanet_scale_shift(const float* x, const float* a, const float* b,
                                              float* y, i64 numel, i64 c, i64 inner, int relu) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < numel;
         i += (i64)blockDim.x * gridDim.x) {
        const i64 ch = (i / inner) % c;
        float v = __fadd_rn(__fmul_rn(x[i], a[ch]), b[ch]);
        y[i] = relu ? fmaxf(v, 0.0f) : v;
    }
}

// The output gradient gated by the fused ReLU: 0 where relu and y <= 0.
__device__ __forceinline__ float gated(float g, float y, int relu) {
    return (relu && y <= 0.0f) ? 0.0f : g;
}

// Per row: (sum g', sum g' * (x - mu)) with g' = gated(g, y), mu = mean[row % c] when `centred`
// (else 0), in the lane order of `gated_sums`. out[2 row] and out[2 row + 1].
extern "C" __global__ void mtanet_bn_gated_row_sums(const float* g, const float* x,
                                                    const float* y, const float* mean,
                                                    int centred, int relu, double* out, i64 rows,
                                                    i64 c, i64 inner) {
    __shared__ float lanes1[LANES * ROWS_PER_BLOCK];
    __shared__ float lanes2[LANES * ROWS_PER_BLOCK];
    const int lane = threadIdx.x % LANES;
    const int local = threadIdx.x / LANES;
    const i64 full = inner / LANES * LANES;
    for (i64 base = (i64)blockIdx.x * ROWS_PER_BLOCK; base < rows;
         base += (i64)gridDim.x * ROWS_PER_BLOCK) {
        const i64 row = base + local;
        float s1 = 0.0f, s2 = 0.0f, mu = 0.0f;
        const i64 off = row * inner;
        if (row < rows) {
            if (centred) mu = mean[row % c];
            for (i64 j = lane; j < full; j += LANES) {
                float gv = gated(g[off + j], y[off + j], relu);
                s1 = __fadd_rn(s1, gv);
                s2 = __fadd_rn(s2, __fmul_rn(gv, __fsub_rn(x[off + j], mu)));
            }
        }
        lanes1[threadIdx.x] = s1;
        lanes2[threadIdx.x] = s2;
        __syncthreads();
        if (row < rows && lane == 0) {
            double t1 = 0.0, t2 = 0.0;
            for (int l = 0; l < LANES; ++l) t1 = __dadd_rn(t1, (double)lanes1[threadIdx.x + l]);
            for (int l = 0; l < LANES; ++l) t2 = __dadd_rn(t2, (double)lanes2[threadIdx.x + l]);
            for (i64 j = full; j < inner; ++j) {
                float gv = gated(g[off + j], y[off + j], relu);
                t1 = __dadd_rn(t1, (double)gv);
                t2 = __dadd_rn(t2, (double)__fmul_rn(gv, __fsub_rn(x[off + j], mu)));
            }
            out[2 * row] = t1;
            out[2 * row + 1] = t2;
        }
        __syncthreads();
    }
}

// Per channel: sum_g and sum_gx = sum over images of (row sum_gx) * scale[ch] (1 unless `scaled`),
// in image order in f64. Writes the parameter gradients dparams[ch] = sum_gx,
// dparams[c + ch] = sum_g, and coef[ch] = sum_g / m, coef[c + ch] = sum_gx / m (f32).
extern "C" __global__ void mtanet_bn_gated_finalize(const double* row2, const float* scale,
                                                    int scaled, float* dparams, float* coef, i64 n,
                                                    i64 c, double m) {
    for (i64 ch = blockIdx.x * (i64)blockDim.x + threadIdx.x; ch < c;
         ch += (i64)blockDim.x * gridDim.x) {
        const double k = scaled ? (double)scale[ch] : 1.0;
        double sg = 0.0, sgx = 0.0;
        for (i64 i = 0; i < n; ++i) {
            const i64 row = i * c + ch;
            sg = __dadd_rn(sg, row2[2 * row]);
            sgx = __dadd_rn(sgx, __dmul_rn(row2[2 * row + 1], k));
        }
        dparams[ch] = (float)sgx;
        dparams[c + ch] = (float)sg;
        coef[ch] = (float)__ddiv_rn(sg, m);
        coef[c + ch] = (float)__ddiv_rn(sgx, m);
    }
}

// Input gradient of the training BatchNorm:
// dx = (w * is) * ((g' - mg) - ((x - mu) * is) * mgx), with mg, mgx from coef.
extern "C" __global__ void mtanet_bn_train_dx(const float* x, const float* g, const float* y,
                                              const float* mean, const float* inv_std,
                                              const float* weight, const float* coef, int relu,
                                              float* dx, i64 numel, i64 c, i64 inner) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < numel;
         i += (i64)blockDim.x * gridDim.x) {
        const i64 ch = (i / inner) % c;
        const float is = inv_std[ch];
        const float k = __fmul_rn(weight[ch], is);
        const float gv = gated(g[i], y[i], relu);
        const float t = __fmul_rn(__fmul_rn(__fsub_rn(x[i], mean[ch]), is), coef[c + ch]);
        dx[i] = __fmul_rn(k, __fsub_rn(__fsub_rn(gv, coef[ch]), t));
    }
}

// Input gradient of the channel affine: dx = scale[ch] * g' (0 where the fused ReLU was off).
extern "C" __global__ void mtanet_affine_dx(const float* g, const float* y, const float* scale,
                                            int relu, float* dx, i64 numel, i64 c, i64 inner) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < numel;
         i += (i64)blockDim.x * gridDim.x) {
        const i64 ch = (i / inner) % c;
        dx[i] = (relu && y[i] <= 0.0f) ? 0.0f : __fmul_rn(scale[ch], g[i]);
    }
}
