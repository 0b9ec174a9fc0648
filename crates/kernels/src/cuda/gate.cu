// Attention-gate kernels for mtanet-kernels (channel / spatial gate, CBAM's channel max+mean
// pooling), compiled at run time by NVRTC (crates/kernels/src/cuda/nvrtc.rs). Semantics are those
// of the CPU code in crates/kernels/src/gate.rs. Every tensor is dense NCHW here (the Rust side
// packs strided operands first); `p` is H * W. Products and sums use the `_rn` intrinsics, so
// NVRTC cannot contract them into FMAs the CPU does not do.
// - The spatial gate's gradient adds over channels in channel order in f32, and the channel
//   max/mean in channel order in f32, as the CPU: bit-identical.
// - The channel gate's gradient (one f64 sum of p products per (image, channel)) is a warp's
//   fixed-shape tree here where the CPU adds in order: deterministic, and equal to the CPU's
//   after the rounding to f32 except in rare last-bit ties.

typedef long long i64;

// The gate value that multiplies element i of x: gate[i / p] (channel) or
// gate[image * p + pixel] (spatial).
__device__ __forceinline__ float gate_at(const float* gate, i64 i, i64 c, i64 p, int spatial) {
    return spatial ? gate[(i / (c * p)) * p + i % p] : gate[i / p];
}

// y = x * gate (forward), or dx = dy * gate (the input gradient): the same kernel.
extern "C" __global__ void mtanet_gate_mul(const float* x, const float* gate, float* y, i64 numel,
                                           i64 c, i64 p, int spatial) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < numel;
         i += (i64)blockDim.x * gridDim.x) {
        y[i] = __fmul_rn(x[i], gate_at(gate, i, c, p, spatial));
    }
}

// Channel gate: dgate[row] = sum over the row's p pixels of dy * x, one warp per (image, channel)
// row: f64 partial sums per lane in pixel order, then a fixed shuffle-down tree.
extern "C" __global__ void mtanet_gate_channel_dgate(const float* dy, const float* x, float* dgate,
                                                     i64 rows, i64 p) {
    const int lane = threadIdx.x % 32;
    const i64 warps = blockDim.x / 32;
    // Warp-uniform loop: all 32 lanes take the same trips, so the full-mask shuffles are safe.
    for (i64 row = blockIdx.x * warps + threadIdx.x / 32; row < rows; row += gridDim.x * warps) {
        const i64 off = row * p;
        double acc = 0.0;
        for (i64 j = lane; j < p; j += 32) {
            acc = __dadd_rn(acc, (double)__fmul_rn(dy[off + j], x[off + j]));
        }
        for (int s = 16; s > 0; s >>= 1) {
            acc = __dadd_rn(acc, __shfl_down_sync(0xffffffffu, acc, s));
        }
        if (lane == 0) dgate[row] = (float)acc;
    }
}

// Spatial gate: dgate[image, pixel] = sum over channels (in order, f32) of dy * x.
extern "C" __global__ void mtanet_gate_spatial_dgate(const float* dy, const float* x,
                                                     float* dgate, i64 n, i64 c, i64 p) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n * p;
         i += (i64)blockDim.x * gridDim.x) {
        const i64 image = i / p, pixel = i % p;
        const i64 base = image * c * p + pixel;
        float acc = 0.0f;
        for (i64 ch = 0; ch < c; ++ch) {
            acc = __fadd_rn(acc, __fmul_rn(dy[base + ch * p], x[base + ch * p]));
        }
        dgate[i] = acc;
    }
}

// First argmax channel of (image, pixel) as `max_mean_image` on the CPU: a value replaces the
// running maximum when greater or NaN. Also the channel sum (in channel order, f32).
__device__ __forceinline__ void max_mean(const float* x, i64 base, i64 c, i64 p, float* max,
                                         i64* argmax, float* sum) {
    float m = x[base];
    float s = m;
    i64 a = 0;
    for (i64 ch = 1; ch < c; ++ch) {
        const float v = x[base + ch * p];
        if (v > m || v != v) {
            m = v;
            a = ch;
        }
        s = __fadd_rn(s, v);
    }
    *max = m;
    *argmax = a;
    *sum = s;
}

// (N, C, p) -> (N, 2, p): the channel max, then the channel mean (sum * (1 / c), as the CPU).
extern "C" __global__ void mtanet_channel_max_mean(const float* x, float* out, i64 n, i64 c,
                                                   i64 p) {
    const float inv = 1.0f / (float)c;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n * p;
         i += (i64)blockDim.x * gridDim.x) {
        const i64 image = i / p, pixel = i % p;
        float m, s;
        i64 a;
        max_mean(x, image * c * p + pixel, c, p, &m, &a, &s);
        out[image * 2 * p + pixel] = m;
        out[image * 2 * p + p + pixel] = __fmul_rn(s, inv);
    }
}

// Backward of the channel max/mean: dx[ch] = g_mean / c + (ch == argmax ? g_max : 0).
extern "C" __global__ void mtanet_channel_max_mean_grad(const float* x, const float* g,
                                                        float* dx, i64 n, i64 c, i64 p) {
    const float inv = 1.0f / (float)c;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n * p;
         i += (i64)blockDim.x * gridDim.x) {
        const i64 image = i / p, pixel = i % p;
        const i64 base = image * c * p + pixel;
        float m, s;
        i64 a;
        max_mean(x, base, c, p, &m, &a, &s);
        const float gm = g[image * 2 * p + pixel];
        const float ga = __fmul_rn(g[image * 2 * p + p + pixel], inv);
        for (i64 ch = 0; ch < c; ++ch) {
            dx[base + ch * p] = __fadd_rn(ga, ch == a ? gm : 0.0f);
        }
    }
}
