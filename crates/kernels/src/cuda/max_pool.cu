// Max-pool forward and backward for mtanet-kernels, compiled at run time by NVRTC
// (crates/kernels/src/cuda/nvrtc.rs). Semantics are those of the CPU kernel in
// crates/kernels/src/max_pool2d.rs, which follows PyTorch's:
// - a window keeps its FIRST maximum in row-major order (`v > best || isnan(v)`, stop at NaN);
// - padded cells and cells past the edge (ceil mode) never take part;
// - backward: each output gradient goes to its window's argmax. Here the backward GATHERS per
//   input cell over the windows that cover it, in ascending (oy, ox) order: the same additions
//   in the same order as the CPU scatter, so the result is bit-identical and deterministic
//   (no atomics).
//
// Input and output-gradient tensors may be strided (offset + 4 strides, in elements); outputs
// are dense NCHW.

typedef long long i64;

struct Axis {
    i64 input, output, kernel, stride, padding;
};

// Valid cells [start, end) of window o along one axis (PoolAxis::window).
__device__ __forceinline__ void window(const Axis a, i64 o, i64* start, i64* end) {
    i64 s = o * a.stride - a.padding;
    i64 e = s + a.kernel;
    if (e > a.input) e = a.input;
    if (s < 0) s = 0;
    if (e < 0) e = 0;
    *start = s;
    *end = e;
}

template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
    return __longlong_as_double(0xfff0000000000000ULL);
}

// Element offset of (plane, y, x) in a strided NCHW tensor with `channels` channels.
__device__ __forceinline__ i64 at(i64 offset, i64 channels, i64 s0, i64 s1, i64 s2, i64 s3,
                                  i64 plane, i64 y, i64 x) {
    return offset + (plane / channels) * s0 + (plane % channels) * s1 + y * s2 + x * s3;
}

// First argmax (y, x) of window (oy, ox) of `plane`, and its value.
template <typename T>
__device__ __forceinline__ void window_argmax(const T* src, i64 offset, i64 channels, i64 s0,
                                              i64 s1, i64 s2, i64 s3, Axis rows, Axis cols,
                                              i64 plane, i64 oy, i64 ox, i64* by, i64* bx,
                                              T* bv) {
    i64 y0, y1, x0, x1;
    window(rows, oy, &y0, &y1);
    window(cols, ox, &x0, &x1);
    i64 best_y = y0, best_x = x0;
    T best = neg_inf<T>();
    for (i64 y = y0; y < y1; ++y) {
        for (i64 x = x0; x < x1; ++x) {
            T v = src[at(offset, channels, s0, s1, s2, s3, plane, y, x)];
            bool nan = v != v;
            if (v > best || nan) {
                best = v;
                best_y = y;
                best_x = x;
                if (nan) {
                    *by = best_y;
                    *bx = best_x;
                    *bv = best;
                    return;
                }
            }
        }
    }
    *by = best_y;
    *bx = best_x;
    *bv = best;
}

// One thread per output element; dst is dense (planes, OH, OW).
template <typename T>
__device__ void fwd(const T* src, T* dst, i64 planes, i64 channels, i64 offset, i64 s0, i64 s1,
                    i64 s2, i64 s3, Axis rows, Axis cols) {
    i64 n = planes * rows.output * cols.output;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n;
         i += (i64)blockDim.x * gridDim.x) {
        i64 ox = i % cols.output;
        i64 oy = (i / cols.output) % rows.output;
        i64 plane = i / (cols.output * rows.output);
        i64 by, bx;
        T v;
        window_argmax(src, offset, channels, s0, s1, s2, s3, rows, cols, plane, oy, ox, &by,
                      &bx, &v);
        dst[i] = v;
    }
}

// One thread per input element; dst is dense (planes, H, W). Gathers, for every window that
// covers (y, x), in ascending (oy, ox) order, the output gradient when (y, x) is its argmax.
template <typename T>
__device__ void bwd(const T* src, const T* grad, T* dst, i64 planes, i64 channels, i64 offset,
                    i64 s0, i64 s1, i64 s2, i64 s3, i64 g_offset, i64 g0, i64 g1, i64 g2,
                    i64 g3, Axis rows, Axis cols) {
    i64 n = planes * rows.input * cols.input;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n;
         i += (i64)blockDim.x * gridDim.x) {
        i64 x = i % cols.input;
        i64 y = (i / cols.input) % rows.input;
        i64 plane = i / (cols.input * rows.input);
        // Windows o with o*stride - padding <= y < o*stride - padding + kernel.
        i64 ry = y + rows.padding, rx = x + cols.padding;
        i64 oy0 = ry < rows.kernel ? 0 : (ry - rows.kernel) / rows.stride + 1;
        i64 oy1 = ry / rows.stride + 1;
        if (oy1 > rows.output) oy1 = rows.output;
        i64 ox0 = rx < cols.kernel ? 0 : (rx - cols.kernel) / cols.stride + 1;
        i64 ox1 = rx / cols.stride + 1;
        if (ox1 > cols.output) ox1 = cols.output;
        T acc = (T)0;
        for (i64 oy = oy0; oy < oy1; ++oy) {
            for (i64 ox = ox0; ox < ox1; ++ox) {
                i64 by, bx;
                T v;
                window_argmax(src, offset, channels, s0, s1, s2, s3, rows, cols, plane, oy, ox,
                              &by, &bx, &v);
                if (by == y && bx == x) {
                    acc += grad[at(g_offset, channels, g0, g1, g2, g3, plane, oy, ox)];
                }
            }
        }
        dst[i] = acc;
    }
}

#define MTANET_MAX_POOL(T, SUFFIX)                                                              \
    extern "C" __global__ void mtanet_max_pool_fwd_##SUFFIX(                                    \
        const T* src, T* dst, i64 planes, i64 channels, i64 offset, i64 s0, i64 s1, i64 s2,    \
        i64 s3, Axis rows, Axis cols) {                                                         \
        fwd<T>(src, dst, planes, channels, offset, s0, s1, s2, s3, rows, cols);                \
    }                                                                                           \
    extern "C" __global__ void mtanet_max_pool_bwd_##SUFFIX(                                    \
        const T* src, const T* grad, T* dst, i64 planes, i64 channels, i64 offset, i64 s0,     \
        i64 s1, i64 s2, i64 s3, i64 g_offset, i64 g0, i64 g1, i64 g2, i64 g3, Axis rows,       \
        Axis cols) {                                                                            \
        bwd<T>(src, grad, dst, planes, channels, offset, s0, s1, s2, s3, g_offset, g0, g1, g2, \
               g3, rows, cols);                                                                 \
    }

MTANET_MAX_POOL(float, f32)
MTANET_MAX_POOL(double, f64)
