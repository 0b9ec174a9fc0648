//! `direct3x3.rs`'s unit kernels with 16 output positions per vector, for groups whose output
//! channels are too few for the wide kernel's vectors across channels (`direct3x3_wide.rs`
//! takes multiples of 16): ResNeXt's grouped layers with 4 and 8 channels per group, on its
//! 28x28 and 14x14 maps at 112x112 input. Runs on AMD Zen 5 (`select.rs`, `CpuKind`), where it
//! was measured.
//!
//! The AVX2 kernel holds blocks of 4 output channels x 3 vectors of 8 positions; here a block
//! is `C` channels x 3 vectors of 16 positions, over the same zero-bordered planes and
//! [`Taps`], the same weights as given, into the same rows of positions. Blocks start every 48
//! positions; where the positions (a multiple of 24) do not end on a block, the last block
//! starts 48 before their end and computes again some positions the block before it wrote,
//! which it overwrites with the same values. Each value is the AVX2 kernel's chain of fused
//! multiply-adds, input channels in order and the reads in order within one, from the same
//! operands: the values equal its values bit for bit.
//!
//! The weight gradient ([`unit_weight_grad`]) keeps the AVX2 kernel's blocks of 4 output
//! channels x 3 taps over vectors of 8 positions, with two input channels per register, one in
//! each 256-bit half: each half sums as the AVX2 kernel's register does, so the gradients are
//! its gradients bit for bit, at twice the multiply-adds per instruction.

#[cfg(target_arch = "x86_64")]
use super::direct3x3_blocks::{lane_sum8, Reads, Taps};

/// f32 lanes of a vector.
const LANES: usize = 16;
/// Vectors of positions in a block.
const VECTORS: usize = 3;
/// Positions of a block.
const BLOCK: usize = LANES * VECTORS;

/// True when units with `c_out` output channels over `reads` run here: a multiple of 4
/// channels, at least one block of positions, on AMD Zen 5.
pub(super) fn applies<T: Taps>(c_out: usize, reads: &Reads<T>) -> bool {
    c_out.is_multiple_of(4) && reads.positions >= BLOCK && crate::cpu_features::zen5()
}

/// `out[co][q] = sum_ci sum_i w[co][ci][weight_tap(i)] * padded[ci][q + offset(i)]` for every
/// output channel and position, as `direct3x3.rs`'s `unit_kernel` computes it: blocks of 8
/// channels where `c_out` is a multiple of 8, else of 4.
///
/// # Safety
/// The CPU supports AVX-512F; `padded` holds `c_in` planes of `reads.plane` values, `w`
/// `c_out * c_in * 9` values, `out` `c_out * reads.positions` values; `c_out` is a multiple of
/// 4 and `reads.positions` at least 48 (checked).
pub(super) unsafe fn unit_kernel<T: Taps>(
    padded: &[f32],
    w: &[f32],
    out: &mut [f32],
    (c_in, c_out): (usize, usize),
    reads: &Reads<T>,
) {
    assert!(
        padded.len() >= c_in * reads.plane
            && w.len() >= c_out * c_in * 9
            && out.len() >= c_out * reads.positions
            && c_out.is_multiple_of(4)
            && reads.positions >= BLOCK
            && reads.in_bounds()
    );
    // SAFETY: checked above; the caller guarantees AVX-512F.
    unsafe {
        if c_out.is_multiple_of(8) {
            channels::<T, 8>((padded, w, out), (c_in, c_out), reads)
        } else {
            channels::<T, 4>((padded, w, out), (c_in, c_out), reads)
        }
    }
}

/// [`unit_kernel`] in blocks of `C` channels.
///
/// # Safety
/// As [`unit_kernel`], with `c_out` a multiple of `C`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn channels<T: Taps, const C: usize>(
    (padded, w, out): (&[f32], &[f32], &mut [f32]),
    (c_in, c_out): (usize, usize),
    reads: &Reads<T>,
) {
    use std::arch::x86_64::*;
    let (xp, wp, op) = (padded.as_ptr(), w.as_ptr(), out.as_mut_ptr());
    let co_stride = c_in * 9;
    let (positions, plane, taps) = (reads.positions, reads.plane, reads.taps);
    for co in (0..c_out).step_by(C) {
        let mut next = 0;
        while next < positions {
            // The last block ends where the positions do.
            let q = next.min(positions - BLOCK);
            next += BLOCK;
            let mut acc = [[_mm512_setzero_ps(); VECTORS]; C];
            for ci in 0..c_in {
                // SAFETY (all pointer reads below): q + 47 + offset < positions + offset <=
                // plane, inside plane `ci` (`in_bounds`); weight indices stay below
                // c_out * c_in * 9.
                let x_base = xp.add(ci * plane + q);
                let w_base = wp.add(co * co_stride + ci * 9);
                for i in 0..T::COUNT {
                    let (s, t) = (x_base.add(taps.offset(i)), taps.weight_tap(i));
                    let xs = [
                        _mm512_loadu_ps(s),
                        _mm512_loadu_ps(s.add(LANES)),
                        _mm512_loadu_ps(s.add(2 * LANES)),
                    ];
                    for (j, acc_j) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(*w_base.add(j * co_stride + t));
                        for (a, xv) in acc_j.iter_mut().zip(xs) {
                            *a = _mm512_fmadd_ps(wv, xv, *a);
                        }
                    }
                }
            }
            for (j, acc_j) in acc.iter().enumerate() {
                // SAFETY: channel co + j < c_out, positions q..q + 48 <= positions.
                let dst = op.add((co + j) * positions + q);
                for (v, a) in acc_j.iter().enumerate() {
                    _mm512_storeu_ps(dst.add(LANES * v), *a);
                }
            }
        }
    }
}

/// Never called: [`applies`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn channels<T: Taps, const C: usize>(
    _: (&[f32], &[f32], &mut [f32]),
    _: (usize, usize),
    _: &Reads<T>,
) {
    unreachable!("the kernel runs only on x86-64")
}

/// True when the weight gradient of units with `c_in` input channels runs [`unit_weight_grad`]:
/// an even number of them, on AMD Zen 5 (with AVX-512DQ, which every Zen 5 has).
pub(super) fn weight_grad_applies(c_in: usize) -> bool {
    c_in.is_multiple_of(2) && crate::cpu_features::zen5() && has_dq()
}

/// True when the CPU has AVX-512DQ (checked once).
fn has_dq() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512dq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `direct3x3.rs`'s `unit_weight_grad` with two input channels per vector: each 256-bit half
/// of a register holds one input channel's 8 lanes of positions, summed as the AVX2 kernel
/// sums them (positions in order per lane, then the lanes in its fixed order), so every
/// weight's gradient is its value bit for bit.
///
/// # Safety
/// The CPU supports AVX-512F and AVX-512DQ; `padded` holds `c_in` planes of `reads.plane`
/// values, `grads` `c_out` rows of `reads.positions` values (zero wherever no output pixel
/// is), `dw` `c_out * c_in * 9` values; `c_out` a multiple of 4, `c_in` even, the positions a
/// multiple of 8 (checked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
pub(super) unsafe fn unit_weight_grad<T: Taps>(
    (padded, grads, dw): (&[f32], &[f32], &mut [f32]),
    (c_in, c_out): (usize, usize),
    reads: &Reads<T>,
) {
    use std::arch::x86_64::*;
    const CHANNELS: usize = 4;
    assert!(
        padded.len() >= c_in * reads.plane
            && grads.len() >= c_out * reads.positions
            && dw.len() >= c_out * c_in * 9
            && c_out.is_multiple_of(CHANNELS)
            && c_in.is_multiple_of(2)
            && reads.positions.is_multiple_of(8)
            && T::COUNT == 9
            && reads.in_bounds()
    );
    let (xp, gp) = (padded.as_ptr(), grads.as_ptr());
    let (positions, plane, taps) = (reads.positions, reads.plane, reads.taps);
    for co in (0..c_out).step_by(CHANNELS) {
        for ci in (0..c_in).step_by(2) {
            for ky in 0..3 {
                let mut acc = [[_mm512_setzero_ps(); 3]; CHANNELS];
                // SAFETY (all pointer reads below): q + 7 + offset < positions + offset <=
                // plane inside planes `ci` and `ci + 1` (`in_bounds`); gradient rows hold
                // `positions` values.
                let (lo, hi) = (xp.add(ci * plane), xp.add((ci + 1) * plane));
                let at = |i: usize| taps.offset(3 * ky + i);
                let (l0, l1, l2) = (lo.add(at(0)), lo.add(at(1)), lo.add(at(2)));
                let (h0, h1, h2) = (hi.add(at(0)), hi.add(at(1)), hi.add(at(2)));
                for q in (0..positions).step_by(8) {
                    let pair = |l: *const f32, h: *const f32| {
                        _mm512_insertf32x8::<1>(
                            _mm512_castps256_ps512(_mm256_loadu_ps(l.add(q))),
                            _mm256_loadu_ps(h.add(q)),
                        )
                    };
                    let xs = [pair(l0, h0), pair(l1, h1), pair(l2, h2)];
                    for (j, acc_j) in acc.iter_mut().enumerate() {
                        let gv = _mm512_broadcast_f32x8(_mm256_loadu_ps(
                            gp.add((co + j) * positions + q),
                        ));
                        for (a, xv) in acc_j.iter_mut().zip(xs) {
                            *a = _mm512_fmadd_ps(gv, xv, *a);
                        }
                    }
                }
                for (j, acc_j) in acc.iter().enumerate() {
                    for (half, c) in [ci, ci + 1].into_iter().enumerate() {
                        let at = ((co + j) * c_in + c) * 9;
                        for (i, a) in acc_j.iter().enumerate() {
                            let v = match half {
                                0 => _mm512_castps512_ps256(*a),
                                _ => _mm512_extractf32x8_ps::<1>(*a),
                            };
                            dw[at + taps.weight_tap(3 * ky + i)] += lane_sum8(v);
                        }
                    }
                }
            }
        }
    }
}

/// Never called: [`weight_grad_applies`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn unit_weight_grad<T: Taps>(
    _: (&[f32], &[f32], &mut [f32]),
    _: (usize, usize),
    _: &Reads<T>,
) {
    unreachable!("the kernel runs only on x86-64")
}

#[cfg(test)]
mod tests {
    use super::super::direct3x3_blocks::TestRowTaps as RowTaps;
    use super::super::test_values_fine as values;
    use super::*;

    /// Every weight's gradient equals the AVX2 kernel's bit for bit (added to the same
    /// starting values), for 2 to 8 input and 4 to 12 output channels.
    #[test]
    fn weight_grad_equals_the_avx2_kernel_bit_for_bit() {
        if !std::arch::is_x86_feature_detected!("avx512f")
            || !has_dq()
            || !super::super::direct3x3_blocks::cpu_supports()
        {
            eprintln!("skipped: this CPU lacks AVX-512 or AVX2");
            return;
        }
        for (c_in, c_out, row, positions) in [
            (4, 4, 29, 816),
            (8, 8, 15, 216),
            (2, 12, 8, 72),
            (6, 4, 6, 40),
        ] {
            let reads = RowTaps::reads(row, positions);
            let padded = values(c_in * reads.plane, 3);
            let grads = values(c_out * positions, 4);
            let start = values(c_out * c_in * 9, 5);
            let (mut want, mut got) = (start.clone(), start);
            // SAFETY: the CPU checks above; the slices hold what the kernels read and write.
            unsafe {
                super::super::direct3x3_blocks::unit_weight_grad(
                    &padded, &grads, &mut want, c_in, c_out, &reads,
                );
                unit_weight_grad((&padded, &grads, &mut got), (c_in, c_out), &reads);
            }
            for (k, (a, b)) in want.iter().zip(&got).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{c_in}->{c_out}: weight {k}");
            }
        }
    }

    /// Every position of every channel equals the AVX2 kernel's value bit for bit, for 4 and 8
    /// (and 12, in blocks of 4) channels and positions that end on a block (48, 816) and
    /// between blocks (72, 216: the last block overlaps the one before).
    #[test]
    fn kernel_equals_the_avx2_kernel_bit_for_bit() {
        if !std::arch::is_x86_feature_detected!("avx512f")
            || !super::super::direct3x3_blocks::cpu_supports()
        {
            eprintln!("skipped: this CPU lacks AVX-512 or AVX2");
            return;
        }
        for (c_in, c_out, row, positions) in [
            (4, 4, 29, 816),
            (8, 8, 15, 216),
            (4, 8, 8, 72),
            (8, 12, 6, 48),
            (3, 4, 15, 240),
        ] {
            let reads = RowTaps::reads(row, positions);
            let padded = values(c_in * reads.plane, 1);
            let w = values(c_out * c_in * 9, 2);
            let mut want = vec![f32::NAN; c_out * positions];
            let mut got = vec![f32::NAN; c_out * positions];
            // SAFETY: the CPU checks above; the slices hold what the kernels read and write.
            unsafe {
                super::super::direct3x3_blocks::unit_kernel(
                    &padded,
                    &w,
                    &mut want,
                    (c_in, c_out),
                    &reads,
                    positions,
                );
                unit_kernel(&padded, &w, &mut got, (c_in, c_out), &reads);
            }
            for (k, (a, b)) in want.iter().zip(&got).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{c_in}->{c_out} over {positions}: channel {} position {}",
                    k / positions,
                    k % positions
                );
            }
        }
    }
}
