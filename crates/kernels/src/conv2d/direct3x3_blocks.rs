//! The register blocks of the direct 3x3 kernels (`direct3x3.rs`, on the stride-1 and
//! stride-2 layouts, and the AVX-512 kernels beside it that are checked against these): where
//! a block's reads go ([`Taps`], [`Reads`]), the forward's block of 4 output channels by 24
//! positions ([`unit_kernel`]) and the weight gradient's of 4 output channels by 3 taps
//! ([`unit_weight_grad`]), on AVX2 and FMA.

/// Output channels one register block computes.
pub(super) const CHANNEL_BLOCK: usize = 4;
/// Output positions one register block computes (three vectors of 8).
pub(super) const POSITION_BLOCK: usize = 24;

/// True when the CPU can run the kernel (AVX2 and FMA, checked once).
pub(super) fn cpu_supports() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static SUPPORTED: OnceLock<bool> = OnceLock::new();
        *SUPPORTED.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Where a kernel's reads go: read `i` (of `COUNT`) takes the value `offset(i)` past the
/// output position in the input channel's buffer and multiplies it by weight tap
/// `weight_tap(i)` (row-major `ky * 3 + kx`). The kernels' loops over `i` are unrolled, so
/// each offset folds into an address of a few registers plus a constant: read from a table of
/// 9 offsets and taps instead, the stride-1 forward ran ~30% slower.
pub(super) trait Taps: Copy {
    /// Reads per output position.
    const COUNT: usize;
    /// Where read `i` is, past the output position.
    fn offset(self, i: usize) -> usize;
    /// The weight tap read `i` is multiplied by.
    fn weight_tap(self, i: usize) -> usize;
}

/// How a kernel reads a unit's input buffer: input channel `ci`'s values start at
/// `ci * plane`, and output position `q` (of `positions`, a whole number of blocks) reads
/// `taps` from there.
#[derive(Clone, Copy)]
pub(super) struct Reads<T: Taps> {
    /// Values per input channel in the buffer.
    pub plane: usize,
    /// Output positions computed per channel.
    pub positions: usize,
    /// Where each read goes.
    pub taps: T,
}

impl<T: Taps> Reads<T> {
    /// True when every read of every position stays inside its channel's `plane` values and
    /// every weight tap is one of the 9.
    pub(super) fn in_bounds(&self) -> bool {
        let furthest = (0..T::COUNT).map(|i| self.taps.offset(i)).max();
        (0..T::COUNT).all(|i| self.taps.weight_tap(i) < 9)
            && self.positions + furthest.unwrap_or(0) <= self.plane
    }
}

/// The sum of a vector's 8 lanes, in the fixed order of the weight gradient's sums (the AVX-512
/// form in `direct3x3_positions512.rs` sums each half of its registers with it, for the same
/// bits): the two halves, then pairs, then the last two.
///
/// # Safety
/// The CPU supports AVX.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn lane_sum8(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
}

/// Adds `sum_q grads[co][q] * padded[ci][q + offset(i)]` to `dw[co][ci][weight_tap(i)]` for
/// every output channel, input channel and read `i` of `reads` (9 of them, taken three at a
/// time: one kernel row), each sum over all `reads.positions` positions.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `padded` holds `c_in` planes of `reads.plane` values,
/// `grads` `c_out` rows of `reads.positions` values (zero wherever no output pixel is), `dw`
/// `c_out * c_in * 9` values; `c_out` is a multiple of [`CHANNEL_BLOCK`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn unit_weight_grad<T: Taps>(
    padded: &[f32],
    grads: &[f32],
    dw: &mut [f32],
    c_in: usize,
    c_out: usize,
    reads: &Reads<T>,
) {
    use std::arch::x86_64::*;
    assert!(
        padded.len() >= c_in * reads.plane
            && grads.len() >= c_out * reads.positions
            && dw.len() >= c_out * c_in * 9
            && c_out.is_multiple_of(CHANNEL_BLOCK)
            && reads.positions.is_multiple_of(8)
            && T::COUNT == 9
            && reads.in_bounds()
    );
    let (xp, gp) = (padded.as_ptr(), grads.as_ptr());
    let (positions, taps) = (reads.positions, reads.taps);
    for co in (0..c_out).step_by(CHANNEL_BLOCK) {
        for ci in 0..c_in {
            for ky in 0..3 {
                let mut acc = [[_mm256_setzero_ps(); 3]; CHANNEL_BLOCK];
                // SAFETY (all pointer reads below): q + 7 + offset < positions + offset <=
                // plane inside plane `ci` (`in_bounds`); gradient rows hold `positions` values.
                let x_base = xp.add(ci * reads.plane);
                // Plain code, not `array::map`: a closure does not inherit this function's
                // target features, so its intrinsics became calls (5x slower).
                let r0 = x_base.add(taps.offset(3 * ky));
                let r1 = x_base.add(taps.offset(3 * ky + 1));
                let r2 = x_base.add(taps.offset(3 * ky + 2));
                for q in (0..positions).step_by(8) {
                    let xs = [
                        _mm256_loadu_ps(r0.add(q)),
                        _mm256_loadu_ps(r1.add(q)),
                        _mm256_loadu_ps(r2.add(q)),
                    ];
                    for (j, acc_j) in acc.iter_mut().enumerate() {
                        let gv = _mm256_loadu_ps(gp.add((co + j) * positions + q));
                        for (a, xv) in acc_j.iter_mut().zip(xs) {
                            *a = _mm256_fmadd_ps(gv, xv, *a);
                        }
                    }
                }
                for (j, acc_j) in acc.iter().enumerate() {
                    let at = ((co + j) * c_in + ci) * 9;
                    for (i, a) in acc_j.iter().enumerate() {
                        dw[at + taps.weight_tap(3 * ky + i)] += lane_sum8(*a);
                    }
                }
            }
        }
    }
}

/// A table of reads for the kernels' tests: stride 1 on rows of `row`, each read's weight tap
/// not its index (the kernels must take each read's own tap).
#[cfg(test)]
#[derive(Clone, Copy)]
pub(super) struct TestRowTaps {
    /// Width of a row of positions.
    pub row: usize,
}

#[cfg(test)]
impl TestRowTaps {
    /// `positions` output positions on rows of `row`, each channel's plane holding the
    /// furthest read of the last position.
    pub(super) fn reads(row: usize, positions: usize) -> Reads<Self> {
        Reads {
            plane: positions + 2 * row + 2,
            positions,
            taps: Self { row },
        }
    }
}

#[cfg(test)]
impl Taps for TestRowTaps {
    const COUNT: usize = 9;
    fn offset(self, i: usize) -> usize {
        (i / 3) * self.row + i % 3
    }
    fn weight_tap(self, i: usize) -> usize {
        (i * 4) % 9
    }
}

/// Never called: [`cpu_supports`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn unit_weight_grad<T: Taps>(
    _: &[f32],
    _: &[f32],
    _: &mut [f32],
    _: usize,
    _: usize,
    _: &Reads<T>,
) {
    unreachable!("direct3x3 runs only on x86-64")
}

/// Computes `out[co][q] = sum_ci sum_i w[co][ci][weight_tap(i)] * padded[ci][q + offset(i)]`
/// for every output channel `co < c_out` and position `q < filled` (rounded up to a vector of
/// 8; the positions past it are left as they were), summing input channels in order and,
/// within one, the reads in order. Blocks of 24 positions, then one of 8 or 16 where the
/// filled positions end inside a block (7x7 maps fill 56 of 72 positions: a whole last block
/// would compute 16 positions no one reads).
///
/// # Safety
/// The CPU supports AVX2 and FMA; `padded` holds `c_in` planes of `reads.plane` values, `w`
/// `c_out * c_in * 9` values, `out` `c_out * reads.positions` values; `c_out` is a multiple of
/// [`CHANNEL_BLOCK`]; `filled <= reads.positions`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn unit_kernel<T: Taps>(
    padded: &[f32],
    w: &[f32],
    out: &mut [f32],
    (c_in, c_out): (usize, usize),
    reads: &Reads<T>,
    filled: usize,
) {
    assert!(
        padded.len() >= c_in * reads.plane
            && w.len() >= c_out * c_in * 9
            && out.len() >= c_out * reads.positions
            && c_out.is_multiple_of(CHANNEL_BLOCK)
            && reads.positions.is_multiple_of(POSITION_BLOCK)
            && filled <= reads.positions
            && reads.in_bounds()
    );
    let computed = filled.next_multiple_of(8);
    let whole = computed / POSITION_BLOCK * POSITION_BLOCK;
    for co in (0..c_out).step_by(CHANNEL_BLOCK) {
        let at = |q| BlockAt { co, q };
        for q in (0..whole).step_by(POSITION_BLOCK) {
            block::<T, 3>((padded, w, &mut *out), c_in, reads, at(q));
        }
        match (computed - whole) / 8 {
            2 => block::<T, 2>((padded, w, &mut *out), c_in, reads, at(whole)),
            1 => block::<T, 1>((padded, w, &mut *out), c_in, reads, at(whole)),
            _ => {}
        }
    }
}

/// Where a block of [`unit_kernel`] lies: its first output channel and position.
#[derive(Clone, Copy)]
struct BlockAt {
    co: usize,
    q: usize,
}

/// One block of [`unit_kernel`]: 4 output channels by `V` vectors of 8 positions from `at`,
/// in `4 * V` registers.
///
/// # Safety
/// As [`unit_kernel`], with `at.q + 8 * V <= reads.positions` and `at.co + 4 <= c_out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block<T: Taps, const V: usize>(
    (padded, w, out): (&[f32], &[f32], &mut [f32]),
    c_in: usize,
    reads: &Reads<T>,
    BlockAt { co, q }: BlockAt,
) {
    use std::arch::x86_64::*;
    let (xp, wp, op) = (padded.as_ptr(), w.as_ptr(), out.as_mut_ptr());
    let co_stride = c_in * 9;
    let (positions, plane, taps) = (reads.positions, reads.plane, reads.taps);
    let mut acc = [[_mm256_setzero_ps(); V]; CHANNEL_BLOCK];
    for ci in 0..c_in {
        // SAFETY (all pointer reads below): q + 8 * V - 1 + offset < positions + offset <=
        // plane, inside plane `ci` (`in_bounds`); weight indices stay below c_out * c_in * 9.
        let x_base = xp.add(ci * plane + q);
        let w_base = wp.add(co * co_stride + ci * 9);
        for i in 0..T::COUNT {
            let (s, t) = (x_base.add(taps.offset(i)), taps.weight_tap(i));
            let mut xs = [_mm256_setzero_ps(); V];
            for (v, x) in xs.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(s.add(8 * v));
            }
            for (j, acc_j) in acc.iter_mut().enumerate() {
                let wv = _mm256_broadcast_ss(&*w_base.add(j * co_stride + t));
                for (a, xv) in acc_j.iter_mut().zip(xs) {
                    *a = _mm256_fmadd_ps(wv, xv, *a);
                }
            }
        }
    }
    for (j, acc_j) in acc.iter().enumerate() {
        // SAFETY: row co + j < c_out holds `positions` values, q + 8 * V <= positions.
        let dst = op.add((co + j) * positions + q);
        for (i, a) in acc_j.iter().enumerate() {
            _mm256_storeu_ps(dst.add(8 * i), *a);
        }
    }
}

/// Never called: [`cpu_supports`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn unit_kernel<T: Taps>(
    _: &[f32],
    _: &[f32],
    _: &mut [f32],
    _: (usize, usize),
    _: &Reads<T>,
    _: usize,
) {
    unreachable!("direct3x3 runs only on x86-64")
}
