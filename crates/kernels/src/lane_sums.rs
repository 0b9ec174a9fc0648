//! Sums over a row in [`LANES`] f32 partial sums, combined in f64: the reductions of the
//! BatchNorm statistics and backward, the convolution epilogue's row sums and the pooling means.
//!
//! Lane `i` adds the row's values `i`, `i + LANES`, ... in order, and the lanes and the tail
//! are then added in f64 in a fixed order, so a result depends only on the row's length: the
//! same on every thread count and in every kernel below (docs/determinism.md). The BatchNorm
//! backward's sums over 16- to 63-value rows carry the lanes on over a channel's rows
//! (`lane_gated_sums`'s starting lanes), so theirs depend on the shape alone.
//!
//! Also the row kernels of the BatchNorm backward's input gradient (`input_grad_row`) and of an
//! attention gate's gradient (`dot_row`: f32 products added in 8 f64 lanes).

/// Lanes of the partial sums: 16 independent f32 accumulators vectorise (one AVX-512 register,
/// two AVX2 ones) where a single running sum cannot, as float addition is not reassociated.
pub(crate) const LANES: usize = 16;

/// `sum(f(v))` over `xs` in [`LANES`] f32 partial sums, combined in f64. The order of additions
/// depends only on the length, so the result is the same on every thread count.
pub(crate) fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    // Fixed-size chunks keep the accumulators in registers (with `chunks_exact` the compiler
    // kept them on the stack, four lanes at a time).
    let (chunks, tail) = xs.as_chunks::<LANES>();
    let mut acc = [0f32; LANES];
    for c in chunks {
        for i in 0..LANES {
            acc[i] += f(c[i]);
        }
    }
    let mut total: f64 = acc.iter().map(|&a| a as f64).sum();
    for &v in tail {
        total += f(v) as f64;
    }
    total
}

// Without AVX2 the portable loop is the kernel.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
pub(crate) use portable_lane_gated_sums as lane_gated_sums;

/// True where the ReLU `max(x * scale + shift, 0)` blocked the gradient of input value `x`:
/// where `x * scale + shift > 0` is false, NaN included (exactly where the forward's
/// `t.max(0.0) <= 0.0` was); never without a ReLU (`relu` is `None`). The one test of the gate
/// that the BatchNorm backward, its lane kernels and their reference all make.
#[inline(always)]
pub(crate) fn relu_blocks(x: f32, relu: Option<(f32, f32)>) -> bool {
    match relu {
        Some((scale, shift)) => {
            let t = x * scale + shift;
            t <= 0.0 || t.is_nan()
        }
        None => false,
    }
}

/// `g` where the ReLU passed ([`relu_blocks`] is false), else +0.
#[inline(always)]
pub(crate) fn passed(g: f32, x: f32, relu: Option<(f32, f32)>) -> f32 {
    if relu_blocks(x, relu) {
        0.0
    } else {
        g
    }
}

/// The per-lane sums of `g'` and `g' * (x - mu)` over whole chunks, added to the lanes `from`,
/// with `g'` the gradient `g` where a ReLU `max(x * scale + shift, 0)` passed
/// (`relu = Some((scale, shift))`; 0 where it blocked, NaN included) or all of `g` (`None`):
/// lane `i` adds value `i` of every chunk, in chunk order. In plain Rust: the build's kernel
/// without AVX2, and the reference the AVX2 kernel is tested against.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "avx2"))))]
pub(crate) fn portable_lane_gated_sums(
    g: &[[f32; LANES]],
    x: &[[f32; LANES]],
    relu: Option<(f32, f32)>,
    mu: f32,
    from: ([f32; LANES], [f32; LANES]),
) -> ([f32; LANES], [f32; LANES]) {
    let (mut s1, mut s2) = from;
    for (g, x) in g.iter().zip(x) {
        for i in 0..LANES {
            let gv = passed(g[i], x[i], relu);
            s1[i] += gv;
            s2[i] += gv * (x[i] - mu);
        }
    }
    (s1, s2)
}

/// [`portable_lane_gated_sums`] in AVX2 registers (the compiler kept the portable loop's
/// accumulators on the stack, at half the speed of the BatchNorm backward's other pass). The
/// same operations in the same order per lane, so the same bits: a mul and an add, no FMA; the
/// gate is `x * scale + shift > 0` (false for NaN), a blocked value is +0.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) fn lane_gated_sums(
    g: &[[f32; LANES]],
    x: &[[f32; LANES]],
    relu: Option<(f32, f32)>,
    mu: f32,
    from: ([f32; LANES], [f32; LANES]),
) -> ([f32; LANES], [f32; LANES]) {
    use std::arch::x86_64::*;
    const HALF: usize = LANES / 2;
    // SAFETY: this build enables AVX2 (the cfg above), and every load and store is of 8
    // consecutive f32 inside a fixed-size chunk or a local array.
    unsafe {
        let (gate_scale, gate_shift) = relu.unwrap_or((0.0, 0.0));
        let (scale, shift) = (_mm256_set1_ps(gate_scale), _mm256_set1_ps(gate_shift));
        let (zero, mu) = (_mm256_setzero_ps(), _mm256_set1_ps(mu));
        let lanes = |a: &[f32; LANES]| {
            let p = a.as_ptr();
            [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(HALF))]
        };
        let (mut s1, mut s2) = (lanes(&from.0), lanes(&from.1));
        for (g, x) in g.iter().zip(x) {
            for h in 0..2 {
                let (g, x) = (&g[h * HALF..][..HALF], &x[h * HALF..][..HALF]);
                let (gv, xv) = (_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(x.as_ptr()));
                let gv = if relu.is_some() {
                    let t = _mm256_add_ps(_mm256_mul_ps(xv, scale), shift);
                    _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(t, zero), gv)
                } else {
                    gv
                };
                s1[h] = _mm256_add_ps(s1[h], gv);
                s2[h] = _mm256_add_ps(s2[h], _mm256_mul_ps(gv, _mm256_sub_ps(xv, mu)));
            }
        }
        let (mut out1, mut out2) = ([0f32; LANES], [0f32; LANES]);
        for h in 0..2 {
            _mm256_storeu_ps(out1[h * HALF..].as_mut_ptr(), s1[h]);
            _mm256_storeu_ps(out2[h * HALF..].as_mut_ptr(), s2[h]);
        }
        (out1, out2)
    }
}

/// The per-channel constants of the BatchNorm backward's input gradient
/// `k * (g' - mean_g - (x - mu) * inv_std * mean_gx)`, and the ReLU gate of `g'`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InputGradTerms {
    /// `weight * inv_std`.
    pub k: f32,
    /// The mean of `g'` over the channel.
    pub mean_g: f32,
    /// The batch mean of the channel's input.
    pub mu: f32,
    /// `1 / sqrt(var + eps)`.
    pub inv_std: f32,
    /// The mean of `g' * (x - mu) * inv_std` over the channel.
    pub mean_gx: f32,
    /// The forward's ReLU as `(scale, shift)`, or `None` ([`relu_blocks`]).
    pub relu: Option<(f32, f32)>,
}

impl InputGradTerms {
    /// One value of the input gradient: the expression every kernel below computes, operation
    /// by operation (a mul and an add, no FMA).
    #[inline(always)]
    pub(crate) fn value(&self, g: f32, x: f32) -> f32 {
        let g = passed(g, x, self.relu);
        self.k * (g - self.mean_g - (x - self.mu) * self.inv_std * self.mean_gx)
    }
}

/// The BatchNorm backward's input gradient over one row: `d[i] = t.value(g[i], x[i])`. In plain
/// Rust: the build's kernel without AVX2, and the reference the AVX2 kernel is tested against.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "avx2"))))]
pub(crate) fn portable_input_grad_row(d: &mut [f32], g: &[f32], x: &[f32], t: &InputGradTerms) {
    for ((d, &gv), &xv) in d.iter_mut().zip(g).zip(x) {
        *d = t.value(gv, xv);
    }
}

// Without AVX2 the portable loop is the kernel.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
pub(crate) use portable_input_grad_row as input_grad_row;

/// [`portable_input_grad_row`] in AVX2 registers, 8 values at a time and the tail through
/// [`InputGradTerms::value`]: the same operations in the same order, so the same bits (the
/// compiler left the portable loop scalar with the gate's test inside it).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) fn input_grad_row(d: &mut [f32], g: &[f32], x: &[f32], t: &InputGradTerms) {
    use std::arch::x86_64::*;
    const WIDTH: usize = 8;
    let len = d.len().min(g.len()).min(x.len());
    let whole = len / WIDTH * WIDTH;
    // SAFETY: this build enables AVX2 (the cfg above), and every load and store is of 8
    // consecutive f32 below `whole`, inside all three slices.
    unsafe {
        let (zero, k, mean_g) = (
            _mm256_setzero_ps(),
            _mm256_set1_ps(t.k),
            _mm256_set1_ps(t.mean_g),
        );
        let (mu, inv_std, mean_gx) = (
            _mm256_set1_ps(t.mu),
            _mm256_set1_ps(t.inv_std),
            _mm256_set1_ps(t.mean_gx),
        );
        let (scale, shift) = t.relu.unwrap_or((0.0, 0.0));
        let (scale, shift) = (_mm256_set1_ps(scale), _mm256_set1_ps(shift));
        for i in (0..whole).step_by(WIDTH) {
            let gv = _mm256_loadu_ps(g.as_ptr().add(i));
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            let gv = if t.relu.is_some() {
                let pre = _mm256_add_ps(_mm256_mul_ps(xv, scale), shift);
                _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(pre, zero), gv)
            } else {
                gv
            };
            let centred = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(xv, mu), inv_std), mean_gx);
            let v = _mm256_mul_ps(k, _mm256_sub_ps(_mm256_sub_ps(gv, mean_g), centred));
            _mm256_storeu_ps(d.as_mut_ptr().add(i), v);
        }
    }
    for i in whole..len {
        d[i] = t.value(g[i], x[i]);
    }
}

/// Lanes of [`dot_row`]'s f64 sums.
const DOT_LANES: usize = 8;

/// `sum(g[i] * z[i])` over a row, with `z = x * a + b` when `affine` is `Some((a, b))` (the
/// BatchNorm output, formed from its input in a register) or `z = x`: each `z` and each product
/// rounded to f32 (a mul and an add, no FMA), the products added in f64, lane `j` of
/// [`DOT_LANES`] adding products `j`, `j + 8`, ..., then the lanes in order and the tail. The
/// order depends only on the row's length. In plain Rust: the build's kernel without AVX2, and
/// the reference the AVX2 kernel is tested against.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "avx2"))))]
pub(crate) fn portable_dot_row(g: &[f32], x: &[f32], affine: Option<(f32, f32)>) -> f64 {
    let z = |v: f32| affine.map_or(v, |(a, b)| v * a + b);
    debug_assert_eq!(g.len(), x.len(), "dot_row: lengths differ");
    let len = g.len().min(x.len());
    let whole = len / DOT_LANES * DOT_LANES;
    let mut lanes = [0f64; DOT_LANES];
    for i in (0..whole).step_by(DOT_LANES) {
        for j in 0..DOT_LANES {
            lanes[j] += (g[i + j] * z(x[i + j])) as f64;
        }
    }
    let mut total: f64 = lanes.iter().sum();
    for i in whole..len {
        total += (g[i] * z(x[i])) as f64;
    }
    total
}

// Without AVX2 the portable loop is the kernel.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
pub(crate) use portable_dot_row as dot_row;

/// [`portable_dot_row`] in AVX2 registers: 8 products at a time, widened to f64 and added into
/// two vectors of 4 lanes; the same operations in the same order per lane, so the same bits
/// (the f64 chain of the scalar loop it replaces held the squeeze-excite gate's backward to one
/// value per cycle).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) fn dot_row(g: &[f32], x: &[f32], affine: Option<(f32, f32)>) -> f64 {
    use std::arch::x86_64::*;
    debug_assert_eq!(g.len(), x.len(), "dot_row: lengths differ");
    let len = g.len().min(x.len());
    let whole = len / DOT_LANES * DOT_LANES;
    let mut lanes = [0f64; DOT_LANES];
    // SAFETY: this build enables AVX2 (the cfg above); every load is of 8 consecutive f32 below
    // `whole <= len`, inside both slices, and the stores are into the local array.
    unsafe {
        let (a, b) = affine.unwrap_or((1.0, 0.0));
        let (a, b) = (_mm256_set1_ps(a), _mm256_set1_ps(b));
        let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        for i in (0..whole).step_by(DOT_LANES) {
            let mut z = _mm256_loadu_ps(x.as_ptr().add(i));
            if affine.is_some() {
                z = _mm256_add_ps(_mm256_mul_ps(z, a), b);
            }
            let prod = _mm256_mul_ps(_mm256_loadu_ps(g.as_ptr().add(i)), z);
            lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(prod)));
            hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(prod)));
        }
        _mm256_storeu_pd(lanes.as_mut_ptr(), lo);
        _mm256_storeu_pd(lanes.as_mut_ptr().add(4), hi);
    }
    let z = |v: f32| affine.map_or(v, |(a, b)| v * a + b);
    let mut total: f64 = lanes.iter().sum();
    for i in whole..len {
        total += (g[i] * z(x[i])) as f64;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` gradient and input values of both signs, the input with a NaN, a -0.0 and an
    /// infinity among them.
    fn gradient_and_input(n: usize) -> (Vec<f32>, Vec<f32>) {
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut x: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 97) as f32 - 40.0) / 3.0)
            .collect();
        x[3] = f32::NAN;
        x[20] = -0.0;
        x[21] = f32::INFINITY;
        (g, x)
    }

    /// The gated sums' kernel (AVX2 where the build has it) has the portable loop's bits in
    /// every lane: values of both signs, zeros of both signs, a NaN and an infinity, with and
    /// without the ReLU gate.
    #[test]
    fn the_gated_sums_kernel_equals_the_portable_loop_bit_for_bit() {
        let (g, x) = gradient_and_input(7 * LANES);
        let (cg, cx) = (g.as_chunks::<LANES>().0, x.as_chunks::<LANES>().0);
        let gates = [
            None,
            Some((0.7f32, -0.2f32)),
            Some((-1.3, 0.4)),
            Some((0.0, 0.0)),
        ];
        for relu in gates {
            let from = (
                std::array::from_fn(|i| i as f32 * 0.5 - 3.0),
                std::array::from_fn(|i| 2.0 - i as f32 * 0.25),
            );
            let got = lane_gated_sums(cg, cx, relu, 0.3, from);
            let want = portable_lane_gated_sums(cg, cx, relu, 0.3, from);
            let bits = |a: [f32; LANES]| a.map(f32::to_bits);
            assert_eq!(bits(got.0), bits(want.0), "sum g', relu {relu:?}");
            assert_eq!(bits(got.1), bits(want.1), "sum g' x, relu {relu:?}");
        }
    }

    /// The sums add lane by lane, then the lanes and the tail in f64: a row whose partial sums
    /// each stay exact in f32 gives the exact total, for lengths below, at and above [`LANES`].
    #[test]
    fn lane_sum_adds_every_value_once() {
        for len in [0, 1, LANES - 1, LANES, LANES + 3, 5 * LANES + 7] {
            let xs: Vec<f32> = (0..len).map(|i| (i % 7) as f32 - 2.5).collect();
            let want: f64 = xs.iter().map(|&v| v as f64).sum();
            assert_eq!(lane_sum(&xs, |v| v), want, "length {len}");
            let squares: f64 = xs.iter().map(|&v| (v * v) as f64).sum();
            assert_eq!(lane_sum(&xs, |v| v * v), squares, "squares, length {len}");
        }
    }

    /// The input gradient's row kernel (AVX2 where the build has it) has the portable loop's
    /// bits for every value, the tail included: values of both signs, signed zeros, a NaN and
    /// an infinity, with and without the ReLU gate.
    #[test]
    fn the_input_gradient_kernel_equals_the_portable_loop_bit_for_bit() {
        let n = 5 * LANES + 3;
        let (g, mut x) = gradient_and_input(n);
        x[n - 1] = f32::NAN;
        for relu in [None, Some((0.7f32, -0.2f32)), Some((-1.3, 0.4))] {
            let t = InputGradTerms {
                k: 1.7,
                mean_g: -0.3,
                mu: 0.45,
                inv_std: 2.5,
                mean_gx: 0.8,
                relu,
            };
            let (mut got, mut want) = (vec![f32::NAN; n], vec![0f32; n]);
            input_grad_row(&mut got, &g, &x, &t);
            portable_input_grad_row(&mut want, &g, &x, &t);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "relu {relu:?}");
        }
    }

    /// The dot kernel (AVX2 where the build has it) has the portable loop's bits, with and
    /// without the affine, for rows of 5, 8, 19, 49 and 784 values of 24 significant bits (so
    /// that a product or a `z` rounded otherwise, a fused multiply-add among them, shows), and
    /// equals the sums written out: each `z` and product rounded to f32, the products in 8 f64
    /// lanes, then the tail. (With f32 products of such values the f64 sums are exact in any
    /// order, so this pins the products and the values summed, not the order.)
    #[test]
    fn the_dot_kernel_equals_the_portable_loop_bit_for_bit() {
        let fine = |n: usize, seed: u32| -> Vec<f32> {
            crate::conv2d::test_values_fine(n, seed)
                .iter()
                .map(|v| v * 1.37)
                .collect()
        };
        for n in [5, 8, 19, 49, 784] {
            let (g, x) = (fine(n, 3), fine(n, 11));
            for affine in [None, Some((0.7f32, -0.2f32)), Some((-1.3, 0.0))] {
                let (got, want) = (dot_row(&g, &x, affine), portable_dot_row(&g, &x, affine));
                assert_eq!(got.to_bits(), want.to_bits(), "{n} values, {affine:?}");
                let z = |v: f32| affine.map_or(v, |(a, b)| v * a + b);
                let whole = n / 8 * 8;
                let mut lanes = [0f64; 8];
                for i in 0..whole {
                    lanes[i % 8] += (g[i] * z(x[i])) as f64;
                }
                let mut total: f64 = lanes.iter().sum();
                for i in whole..n {
                    total += (g[i] * z(x[i])) as f64;
                }
                assert_eq!(
                    got.to_bits(),
                    total.to_bits(),
                    "{n} values, {affine:?}: order"
                );
            }
        }
    }
}
