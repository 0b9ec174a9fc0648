//! The direct 3x3 kernels with their vectors across output channels, for CPUs with AVX-512
//! (Intel, AMD Zen 5 and Zen 4) and groups of a multiple of 16 output channels: ResNeXt's
//! grouped layers with 16 and 32 channels per group, which run on 7x7 and 4x4 maps at 112x112
//! input, and the dense layers `select.rs` gives the direct kernel.
//!
//! `direct3x3.rs`'s AVX2 kernel puts 8 output positions in each vector. On a 7x7 map its rows
//! of `W + 1 = 8` positions, rounded up to blocks of 24, make 72 positions for 49 pixels, and on
//! a 4x4 map 24 for 16: a third of its multiplies are thrown away. Here a vector holds 16
//! output channels of one position, and each input value is broadcast from memory into the
//! multiply that uses it, so a block is any number of positions: the kernel computes the
//! positions the caller reads back (`filled`, whole rows of `W + 1`) in blocks of 24, 12, 8 or
//! 6 positions (1, 2, 3 or 4 vectors of channels), then blocks of 8, 4, 4 or 2, and no more.
//!
//! It reads the same zero-bordered planes through the same [`Taps`] and writes the same
//! `c_out` rows of positions as [`unit_kernel`]; only the weights come repacked, each input
//! channel's taps holding the group's output channels side by side ([`GroupWeights`]). Each
//! output value is the same chain of fused multiply-adds, input channels in order and the reads
//! in order within one, from the same operands: the values equal the AVX2 kernel's bit for
//! bit. The input gradient runs through it as the forward does (stride 1: the transposed
//! convolution; stride 2: its four phases).
//!
//! The weight gradient ([`unit_weight_grad_wide`]) takes the output gradient transposed, one
//! row of output channels per position: each (input channel, tap) pair keeps a vector of 16
//! output channels' sums, 2 input channels x 9 taps in 18 registers, over the positions in
//! order. This changes the order of its additions: per weight, one sum over an image's
//! positions in order, added to the image sums before it (where the AVX2 kernel sums 8 lanes
//! of positions, and GEMM in its own blocks).
//!
//! Measured with `conv_passes` on ResNeXt-50 32x4d's grouped layers with 16 and 32 channels
//! per group at 112x112 input (batch 32; CPU time of 2 threads, best of 6), against what ran
//! there before: forward 0.80 and input gradient 0.76-0.80 at 7x7, about 0.95 at 4x4, input
//! gradient 0.86 at stride 2 from 14x14; weight gradient 0.53-0.65 of GEMM's on 7x7 and 4x4
//! outputs and 0.62-0.75 of the AVX2 kernel's on larger ones (`select.rs`).
//!
//! On AMD Zen 5 the three passes of ResNeXt's grouped layers on square maps run the same
//! multiply-adds on the unit's own planes instead (`direct3x3_wide_rows.rs`), without the
//! padded rows.

use super::direct3x3_blocks::{unit_kernel, Reads, Taps};
use super::scratch::Scratch;
use super::weight_packs::{packed, PackKind, WeightPacks};
use rayon::prelude::*;
use std::sync::Arc;

/// Output channels one vector holds.
const LANES: usize = 16;

/// True on the CPUs the wide kernels were measured on and run on: Intel with AVX-512, AMD Zen 5
/// server cores and AMD Zen 4, which splits 512-bit operations over 256-bit units and still ran
/// them faster than the AVX2 kernels (`select.rs`, `CpuKind`); elsewhere the AVX2 kernels run.
fn cpu_supports() -> bool {
    crate::cpu_features::avx512_kernels()
}

/// True when units with `c_out` output channels run the wide kernels (the forward's, which the
/// input gradient runs through, and [`unit_weight_grad_wide`]): a multiple of 16, on a CPU
/// [`cpu_supports`] names.
pub(super) fn runs_wide(c_out: usize) -> bool {
    c_out.is_multiple_of(LANES) && cpu_supports()
}

/// Each group's weights for the unit kernel that runs here: as given (`(c_out, c_in, 9)` per
/// group) for [`unit_kernel`], or repacked to `(c_in, 9, c_out)` for the wide kernel.
pub(super) struct GroupWeights<'a> {
    values: Values<'a>,
    group_len: usize,
    wide: bool,
}

/// Where [`GroupWeights`]' values lie: the layer's own, or its packed layout (made for this
/// call, or kept in the layer's [`WeightPacks`]).
enum Values<'a> {
    Given(&'a [f32]),
    Packed(Arc<Scratch>),
}

impl std::ops::Deref for Values<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Values::Given(w) => w,
            Values::Packed(packed) => packed,
        }
    }
}

impl<'a> GroupWeights<'a> {
    /// The weights `w` of `w.len() / (c_out * c_in * 9)` groups of `c_out` output and `c_in`
    /// input channels each, row-major `(c_out, c_in, 3, 3)` within a group.
    pub(super) fn new(w: &'a [f32], c_in: usize, c_out: usize) -> Self {
        Self::kept(w, c_in, c_out, None)
    }

    /// The weights as given, whatever the output channels per group: for the kernels that read
    /// them as the layer holds them (every one but the wide kernel, whose layout
    /// [`Self::kept`] packs; also the narrow groups' kernel on groups of 16,
    /// `direct3x3_narrow_rows.rs`).
    pub(super) fn given(w: &'a [f32], c_in: usize, c_out: usize) -> Self {
        let group_len = c_out * c_in * 9;
        assert!(group_len > 0 && w.len().is_multiple_of(group_len));
        Self {
            values: Values::Given(w),
            group_len,
            wide: false,
        }
    }

    /// As [`Self::new`], the wide kernel's layout taken from `packs` where it holds one, else
    /// made and kept there for the next call (`weight_packs.rs`): the same values either way.
    pub(super) fn kept(
        w: &'a [f32],
        c_in: usize,
        c_out: usize,
        packs: Option<&WeightPacks>,
    ) -> Self {
        let given = Self::given(w, c_in, c_out);
        if !runs_wide(c_out) {
            return given;
        }
        let group_len = given.group_len;
        let values = Values::Packed(packed(packs, PackKind::Wide, || {
            // In parallel over the groups (ResNeXt-50's layer of 32 groups of 32 output
            // channels turns 295 K values), each group's packed values written in order;
            // the rows cover every value.
            let mut packed = Scratch::take(w.len());
            packed
                .par_chunks_exact_mut(group_len)
                .zip(w.par_chunks_exact(group_len))
                .for_each(|(dst, src)| {
                    for (k, row) in dst.chunks_exact_mut(c_out).enumerate() {
                        // Row `k = ci * 9 + t` holds tap `t` of input channel `ci` for
                        // every output channel, `c_in * 9` apart in `src`.
                        for (d, &v) in row.iter_mut().zip(src[k..].iter().step_by(c_in * 9)) {
                            *d = v;
                        }
                    }
                });
            packed
        }));
        Self {
            values,
            group_len,
            wide: true,
        }
    }

    /// True when the weights are packed for the wide kernel.
    pub(super) fn wide(&self) -> bool {
        self.wide
    }

    /// `group`'s weights as packed: `(c_in, 9, c_out)` when [`Self::wide`], else as given.
    pub(super) fn group(&self, group: usize) -> &[f32] {
        &self.values[group * self.group_len..][..self.group_len]
    }

    /// [`unit_kernel`] over `group`'s weights, or the wide kernel when it runs here; the
    /// wide and the AVX2 kernels write only the first `filled` positions of each output row
    /// (rounded up to their blocks), the Zen 5 position kernel all of them.
    ///
    /// # Safety
    /// As [`unit_kernel`], with `group`'s weights, and `filled <= reads.positions`.
    pub(super) unsafe fn run<T: Taps>(
        &self,
        group: usize,
        (padded, out): (&[f32], &mut [f32]),
        (c_in, c_out): (usize, usize),
        reads: &Reads<T>,
        filled: usize,
    ) {
        assert_eq!(self.group_len, c_out * c_in * 9);
        let w = &self.values[group * self.group_len..][..self.group_len];
        if self.wide {
            assert!(filled <= reads.positions);
            // SAFETY: `runs_wide` checked AVX-512 and the channel count; the slices' lengths
            // are the caller's guarantee, checked again inside.
            let operands = (padded, w, out);
            // The most vectors per block that divide the channels: 4, else 3, 2 or 1.
            match c_out / LANES {
                n if n.is_multiple_of(4) => {
                    wide_kernel::<T, 4, 6, 2>(operands, (c_in, c_out), reads, filled)
                }
                n if n.is_multiple_of(3) => {
                    wide_kernel::<T, 3, 8, 4>(operands, (c_in, c_out), reads, filled)
                }
                n if n.is_multiple_of(2) => {
                    wide_kernel::<T, 2, 12, 4>(operands, (c_in, c_out), reads, filled)
                }
                _ => wide_kernel::<T, 1, 24, 8>(operands, (c_in, c_out), reads, filled),
            }
        } else if super::direct3x3_positions512::applies(c_out, reads) {
            // SAFETY: `applies` checked AVX-512 (Zen 5); the slices as for the AVX2 kernel.
            super::direct3x3_positions512::unit_kernel(padded, w, out, (c_in, c_out), reads)
        } else {
            unit_kernel(padded, w, out, (c_in, c_out), reads, filled)
        }
    }
}

/// `out[co][q] = sum_ci sum_i w[ci][weight_tap(i)][co] * padded[ci][q + offset(i)]` for every
/// output channel and position `q < filled` (rounded up to a block of `TAIL`), as
/// [`unit_kernel`] sums it: blocks of `V` vectors of 16 channels, each over blocks of `P`
/// positions, then of `TAIL`.
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wide_kernel<T: Taps, const V: usize, const P: usize, const TAIL: usize>(
    (padded, w, out): (&[f32], &[f32], &mut [f32]),
    (c_in, c_out): (usize, usize),
    reads: &Reads<T>,
    filled: usize,
) {
    assert!(
        c_out.is_multiple_of(V * LANES)
            && padded.len() >= c_in * reads.plane
            && w.len() >= c_in * 9 * c_out
            && out.len() >= c_out * reads.positions
            && reads.positions.is_multiple_of(P)
            && reads.positions.is_multiple_of(TAIL)
            && filled <= reads.positions
            && reads.in_bounds()
    );
    for co in (0..c_out).step_by(V * LANES) {
        let mut q = 0;
        while q + P <= filled {
            // SAFETY: q + P <= positions, checked above with the reads' bounds.
            wide_block::<T, V, P>((padded, w, out), (c_in, c_out), reads, (co, q));
            q += P;
        }
        while q < filled {
            // SAFETY: q and positions are multiples of TAIL, so q + TAIL <= positions.
            wide_block::<T, V, TAIL>((padded, w, out), (c_in, c_out), reads, (co, q));
            q += TAIL;
        }
    }
}

/// Never called: [`runs_wide`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn wide_kernel<T: Taps, const V: usize, const P: usize, const TAIL: usize>(
    _: (&[f32], &[f32], &mut [f32]),
    _: (usize, usize),
    _: &Reads<T>,
    _: usize,
) {
    unreachable!("the wide kernel runs only on x86-64")
}

/// Positions `q0..q0 + P` of output channels `co0..co0 + 16 * V`: `P x V` accumulators over
/// the input channels and reads, then written channel by channel.
///
/// # Safety
/// The CPU supports AVX-512F; `co0 + V * 16 <= c_out`, `q0 + P <= reads.positions`, and the
/// slices are as [`wide_kernel`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn wide_block<T: Taps, const V: usize, const P: usize>(
    (padded, w, out): (&[f32], &[f32], &mut [f32]),
    (c_in, c_out): (usize, usize),
    reads: &Reads<T>,
    (co0, q0): (usize, usize),
) {
    use std::arch::x86_64::*;
    let (xp, wp) = (padded.as_ptr(), w.as_ptr());
    let (plane, positions, taps) = (reads.plane, reads.positions, reads.taps);
    let mut acc = [[_mm512_setzero_ps(); V]; P];
    for ci in 0..c_in {
        // SAFETY (all reads): position q0 + k + offset(i) < positions + offset <= plane inside
        // plane `ci` (`in_bounds`); weight `(ci * 9 + tap) * c_out + 16 * v + 15` < c_in * 9 *
        // c_out.
        let x_base = xp.add(ci * plane + q0);
        let w_base = wp.add(ci * 9 * c_out + co0);
        for i in 0..T::COUNT {
            let (s, t) = (x_base.add(taps.offset(i)), taps.weight_tap(i));
            let mut wv = [_mm512_setzero_ps(); V];
            for (v, wv) in wv.iter_mut().enumerate() {
                *wv = _mm512_loadu_ps(w_base.add(t * c_out + v * LANES));
            }
            for (k, acc_k) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*s.add(k));
                for (a, wv) in acc_k.iter_mut().zip(wv) {
                    *a = _mm512_fmadd_ps(wv, xv, *a);
                }
            }
        }
    }
    // Channels-across vectors to the kernel's rows of positions, through the stack.
    let mut block = [[0.0f32; LANES]; P];
    let op = out.as_mut_ptr();
    for v in 0..V {
        for (k, acc_k) in acc.iter().enumerate() {
            _mm512_storeu_ps(block[k].as_mut_ptr(), acc_k[v]);
        }
        for j in 0..LANES {
            // SAFETY: channel co0 + 16 * v + j < c_out, position q0 + k < positions.
            let dst = op.add((co0 + v * LANES + j) * positions + q0);
            for (k, values) in block.iter().enumerate() {
                *dst.add(k) = values[j];
            }
        }
    }
}

/// Writes the output gradient of one unit (`c_out` planes of `h x w`) as `grads_t`, one row of
/// `c_out` values per position of rows of `row` (the kernel's numbering), zero on the
/// positions past each row's `w` pixels, for `filled = h * row` positions. Each 16 channels of
/// a row are gathered from their planes in one instruction (a scalar loop writing one channel
/// at a time over every row took 1 ms for an image batch of 64-channel 28x28 maps,
/// `direct3x3_dense_weight_grad.rs`; the gathers 0.1-0.25 ms). Also the dense weight
/// gradient's transposition, with `row = w`.
///
/// Panics unless the wide kernels run on this CPU ([`runs_wide`]`(c_out)`) and the slices hold
/// the unit and its rows.
pub(super) fn transpose_grads(
    dy_unit: &[f32],
    (h, w, row): (usize, usize, usize),
    c_out: usize,
    grads_t: &mut [f32],
) {
    assert!(row >= w && dy_unit.len() == c_out * h * w && grads_t.len() >= h * row * c_out);
    assert!(
        runs_wide(c_out) && h * w < 1 << 26,
        "transpose_grads: {c_out} x {h} x {w}"
    );
    if row == w {
        // SAFETY: as below; the rows are the planes' own, `h * w` positions each.
        return unsafe {
            transpose_planes_avx512(dy_unit, h * w, c_out, &mut grads_t[..h * w * c_out])
        };
    }
    // SAFETY: `runs_wide` checked AVX-512F and that c_out is a multiple of 16; the lengths
    // and the gather's 32-bit offsets (at most 15 planes of h x w) are checked above.
    unsafe { transpose_grads_avx512(dy_unit, (h, w, row), c_out, &mut grads_t[..h * row * c_out]) }
}

/// [`transpose_grads`] on rows of `w` (no padding positions): blocks of 16 channels x 16
/// positions loaded a plane's run at a time and transposed in registers (the gathers of
/// [`transpose_grads_avx512`] took a fifth of the in-place weight gradient on 14x14 maps).
///
/// # Safety
/// AVX-512F; `c_out` a multiple of 16, `dy_unit` `c_out` planes of `pixels` values, `grads_t`
/// `pixels * c_out` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_planes_avx512(
    dy_unit: &[f32],
    pixels: usize,
    c_out: usize,
    grads_t: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(dy_unit.len() == c_out * pixels && grads_t.len() == pixels * c_out);
    let (src, dst) = (dy_unit.as_ptr(), grads_t.as_mut_ptr());
    for c0 in (0..c_out).step_by(LANES) {
        for q0 in (0..pixels).step_by(LANES) {
            let n = LANES.min(pixels - q0);
            let mask: __mmask16 = if n == LANES { !0 } else { (1 << n) - 1 };
            // SAFETY: channels c0..c0 + 16 <= c_out, positions q0..q0 + n <= pixels (the
            // masked lanes read nothing); the stores write rows q0..q0 + n of `grads_t`.
            let mut rows = [_mm512_setzero_ps(); LANES];
            for (j, row) in rows.iter_mut().enumerate() {
                *row = _mm512_maskz_loadu_ps(mask, src.add((c0 + j) * pixels + q0));
            }
            let columns = transpose16(rows);
            for (k, column) in columns.iter().enumerate().take(n) {
                _mm512_storeu_ps(dst.add((q0 + k) * c_out + c0), *column);
            }
        }
    }
}

/// The 16 x 16 transpose of `rows`: lane `j` of result `k` is lane `k` of row `j`. Pairs of
/// rows interleaved by values, then by pairs of values, then the 128-bit quarters exchanged
/// twice.
///
/// # Safety
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(
    rows: [std::arch::x86_64::__m512; LANES],
) -> [std::arch::x86_64::__m512; LANES] {
    use std::arch::x86_64::*;
    // (Loops, not `array::from_fn`: its closures do not inherit AVX-512 and were called.)
    // t[2k], t[2k+1]: rows 2k and 2k+1 interleaved, values 0-1 / 2-3 of each quarter.
    let mut t = [_mm512_setzero_ps(); LANES];
    for k in 0..LANES / 2 {
        t[2 * k] = _mm512_unpacklo_ps(rows[2 * k], rows[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(rows[2 * k], rows[2 * k + 1]);
    }
    // u[4k+m]: quarter q holds rows 4k..4k+4 at value 4q + m.
    let mut u = [_mm512_setzero_ps(); LANES];
    for k in 0..LANES / 4 {
        for h in 0..2 {
            let a = _mm512_castps_pd(t[4 * k + h]);
            let b = _mm512_castps_pd(t[4 * k + 2 + h]);
            u[4 * k + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            u[4 * k + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        }
    }
    // Result 4q + m gathers quarter q of u[m], u[4+m], u[8+m], u[12+m].
    let mut out = [_mm512_setzero_ps(); LANES];
    for m in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x44>(u[m], u[4 + m]);
        let v1 = _mm512_shuffle_f32x4::<0xEE>(u[m], u[4 + m]);
        let v2 = _mm512_shuffle_f32x4::<0x44>(u[8 + m], u[12 + m]);
        let v3 = _mm512_shuffle_f32x4::<0xEE>(u[8 + m], u[12 + m]);
        out[m] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
        out[4 + m] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
        out[8 + m] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        out[12 + m] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
    }
    out
}

/// Never called: [`runs_wide`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose_planes_avx512(_: &[f32], _: usize, _: usize, _: &mut [f32]) {
    unreachable!("the wide kernel runs only on x86-64")
}

/// [`transpose_grads`] once its bounds are checked.
///
/// # Safety
/// AVX-512F; `c_out` a multiple of 16, `dy_unit` `c_out * h * w` values, `grads_t` `h * row *
/// c_out`, `h * w < 2^26`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_grads_avx512(
    dy_unit: &[f32],
    (h, w, row): (usize, usize, usize),
    c_out: usize,
    grads_t: &mut [f32],
) {
    use std::arch::x86_64::*;
    let plane = (h * w) as i32;
    let index = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(plane),
    );
    for (q, dst) in grads_t.chunks_exact_mut(c_out).enumerate() {
        let (y, x) = (q / row, q % row);
        if x >= w {
            dst.fill(0.0);
            continue;
        }
        for c0 in (0..c_out).step_by(LANES) {
            // SAFETY: channels c0..c0 + 16 <= c_out at pixel (y, x) of the unit; the store
            // writes 16 values of this row.
            let src = dy_unit.as_ptr().add(c0 * h * w + y * w + x);
            let v = _mm512_i32gather_ps::<4>(index, src.cast());
            _mm512_storeu_ps(dst.as_mut_ptr().add(c0), v);
        }
    }
}

/// Never called: [`runs_wide`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose_grads_avx512(_: &[f32], _: (usize, usize, usize), _: usize, _: &mut [f32]) {
    unreachable!("the wide kernel runs only on x86-64")
}

/// Adds `sum_q grads_t[q][co] * padded[ci][q + offset(i)]` over the positions `q < filled`
/// to `dw_t[ci][weight_tap(i)][co]`, for every output channel, input channel and read: the
/// weight gradient of one unit with vectors across output channels. Each sum runs over the
/// positions in order in its own lane (fused multiply-adds from zero), then is added to
/// `dw_t` once.
///
/// # Safety
/// The CPU supports AVX-512F ([`runs_wide`]); `padded` holds `c_in` planes of
/// `reads.plane` values, `grads_t` `filled` rows of `c_out` values, `dw_t` `c_in * 9 * c_out`
/// values; `c_in` is even, `c_out` a multiple of 16, `filled <= reads.positions`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn unit_weight_grad_wide<T: Taps>(
    (padded, grads_t, dw_t): (&[f32], &[f32], &mut [f32]),
    (c_in, c_out): (usize, usize),
    reads: &Reads<T>,
    filled: usize,
) {
    use std::arch::x86_64::*;
    /// Input channels one block of accumulators covers.
    const BLOCK: usize = 2;
    assert!(
        T::COUNT == 9
            && c_in.is_multiple_of(BLOCK)
            && c_out.is_multiple_of(LANES)
            && padded.len() >= c_in * reads.plane
            && grads_t.len() >= filled * c_out
            && dw_t.len() >= c_in * 9 * c_out
            && filled <= reads.positions
            && reads.in_bounds()
    );
    let (xp, gp, dp) = (padded.as_ptr(), grads_t.as_ptr(), dw_t.as_mut_ptr());
    let (plane, taps) = (reads.plane, reads.taps);
    for co in (0..c_out).step_by(LANES) {
        for ci in (0..c_in).step_by(BLOCK) {
            let mut acc = [[_mm512_setzero_ps(); 9]; BLOCK];
            for q in 0..filled {
                // SAFETY (all reads): row q < filled of `grads_t`; position q + offset(i) <
                // positions + offset <= plane inside plane ci + b (`in_bounds`).
                let gv = _mm512_loadu_ps(gp.add(q * c_out + co));
                for (b, acc_b) in acc.iter_mut().enumerate() {
                    let x_base = xp.add((ci + b) * plane + q);
                    for (i, a) in acc_b.iter_mut().enumerate() {
                        let xv = _mm512_set1_ps(*x_base.add(taps.offset(i)));
                        *a = _mm512_fmadd_ps(gv, xv, *a);
                    }
                }
            }
            for (b, acc_b) in acc.iter().enumerate() {
                for (i, a) in acc_b.iter().enumerate() {
                    // SAFETY: (ci + b, tap, co..co + 16) lies inside `dw_t`.
                    let at = dp.add(((ci + b) * 9 + taps.weight_tap(i)) * c_out + co);
                    _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), *a));
                }
            }
        }
    }
}

/// Never called: [`runs_wide`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn unit_weight_grad_wide<T: Taps>(
    _: (&[f32], &[f32], &mut [f32]),
    _: (usize, usize),
    _: &Reads<T>,
    _: usize,
) {
    unreachable!("the wide kernel runs only on x86-64")
}

#[cfg(test)]
mod tests {
    use super::super::direct3x3_blocks::TestRowTaps as RowTaps;
    use super::super::test_values_fine as values;
    use super::*;

    /// The wide kernel writes what the AVX2 kernel writes, bit for bit, on every position it
    /// fills, for 16 to 64 output channels and fills that end on a block and between blocks.
    #[test]
    fn wide_kernel_equals_the_avx2_kernel_bit_for_bit() {
        if !cpu_supports() || !super::super::direct3x3_blocks::cpu_supports() {
            eprintln!("skipped: this CPU lacks AVX-512 or AVX2");
            return;
        }
        for (c_in, c_out, row, filled) in [
            (16, 16, 8, 56),
            (16, 16, 8, 72),
            (32, 32, 5, 20),
            (8, 48, 6, 30),
            (64, 64, 9, 66),
            (4, 16, 3, 1),
            (8, 128, 8, 48),
            (4, 96, 8, 16),
            (4, 80, 8, 24),
        ] {
            let positions = 72;
            let reads = RowTaps::reads(row, positions);
            let padded = values(c_in * reads.plane, 1);
            let w = values(c_out * c_in * 9, 2);
            let mut want = vec![f32::NAN; c_out * positions];
            let mut got = vec![f32::NAN; c_out * positions];
            let avx2 = GroupWeights {
                values: Values::Given(w.as_slice()),
                group_len: w.len(),
                wide: false,
            };
            let wide = GroupWeights::new(&w, c_in, c_out);
            assert!(wide.wide);
            // SAFETY: the CPU checks above; the slices hold what the kernels read and write.
            unsafe {
                avx2.run(0, (&padded, &mut want), (c_in, c_out), &reads, filled);
                wide.run(0, (&padded, &mut got), (c_in, c_out), &reads, filled);
            }
            for co in 0..c_out {
                for q in 0..filled {
                    let (a, b) = (want[co * positions + q], got[co * positions + q]);
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{c_in}->{c_out} row {row}: channel {co} position {q}"
                    );
                }
            }
        }
    }

    /// The wide weight gradient is, for every weight, the plain loop over the positions in
    /// order (a fused multiply-add per position, from zero) added once to what `dw_t` held,
    /// bit for bit; transposed gradients are zero on the padding positions.
    #[test]
    fn wide_weight_grad_is_the_plain_loop_bit_for_bit() {
        if !cpu_supports() {
            eprintln!("skipped: the wide kernels do not run on this CPU");
            return;
        }
        for (c_in, c_out, (h, w, row)) in [
            (16, 16, (7, 7, 8)),
            (4, 32, (4, 4, 5)),
            (2, 48, (3, 5, 7)),
            // Rows of `w`: the transposition in registers, whole blocks and a tail.
            (4, 16, (7, 7, 7)),
            (2, 32, (4, 4, 4)),
            (2, 48, (5, 9, 9)),
        ] {
            let filled = h * row;
            let reads = RowTaps::reads(row, 72);
            let padded = values(c_in * reads.plane, 3);
            let dy = values(c_out * h * w, 4);
            let mut grads_t = vec![f32::NAN; filled * c_out];
            transpose_grads(&dy, (h, w, row), c_out, &mut grads_t);
            let start = values(c_in * 9 * c_out, 5);
            let mut got = start.clone();
            // SAFETY: the CPU check above; the slices hold what the kernel reads and writes.
            unsafe {
                unit_weight_grad_wide((&padded, &grads_t, &mut got), (c_in, c_out), &reads, filled)
            };
            for ci in 0..c_in {
                for i in 0..9 {
                    let t = reads.taps.weight_tap(i);
                    for co in 0..c_out {
                        let mut sum = 0.0f32;
                        for q in 0..filled {
                            let (y, x) = (q / row, q % row);
                            let g = if x < w { dy[(co * h + y) * w + x] } else { 0.0 };
                            assert_eq!(grads_t[q * c_out + co].to_bits(), g.to_bits());
                            let xv = padded[ci * reads.plane + q + reads.taps.offset(i)];
                            sum = g.mul_add(xv, sum);
                        }
                        let at = (ci * 9 + t) * c_out + co;
                        let want = start[at] + sum;
                        assert_eq!(
                            got[at].to_bits(),
                            want.to_bits(),
                            "{c_in}->{c_out}: ({ci}, {t}, {co})"
                        );
                    }
                }
            }
        }
    }
}
