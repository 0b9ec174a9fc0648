//! One row of an elementwise affine pass, `max?(x * a (+ b) (+ s[i]), 0)`: the BatchNorm output
//! (training and the eval epilogue), the residual join after it, and a channel gate's join.
//!
//! The passes run over (image, channel) rows, which on the last stages' 4x4 and 7x7 maps hold 16
//! or 49 values. The compiler vectorised the plain loops 32 values at a time and left the rest to
//! a scalar loop, so a 16-value row ran scalar and a 49-value row one-third scalar. Here whole
//! vectors of 8 run first and only the last `len % 8` values are scalar, with the same operations
//! in the same order (a mul, then the adds, then the ReLU; no FMA), so the same bits.

/// Which terms one row's pass applies after `x * a`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowAffine<'a> {
    /// The multiplier (BatchNorm scale, or the gate).
    pub a: f32,
    /// The shift added next, if any (a gate join has none).
    pub b: Option<f32>,
    /// The shortcut added last, the row's length, if any (the residual join).
    pub shortcut: Option<&'a [f32]>,
    /// Whether `max(_, 0)` follows.
    pub relu: bool,
}

impl RowAffine<'_> {
    /// Row `row` of a per-channel affine over (image, channel) rows: `x * a[c] + b[c]` for the
    /// row's channel `c = row % a.len()`, with the ReLU when `relu`; no shortcut.
    pub(crate) fn of_channel(row: usize, (a, b): (&[f32], &[f32]), relu: bool) -> Self {
        let c = row % a.len();
        RowAffine {
            a: a[c],
            b: Some(b[c]),
            shortcut: None,
            relu,
        }
    }

    /// Value `i` of the row from its input `x`: the expression every kernel computes.
    #[inline(always)]
    fn value(&self, i: usize, x: f32) -> f32 {
        let mut t = x * self.a;
        if let Some(b) = self.b {
            t += b;
        }
        if let Some(s) = self.shortcut {
            t += s[i];
        }
        if self.relu {
            t.max(0.0)
        } else {
            t
        }
    }

    /// The pass over `values` in place.
    pub(crate) fn apply_in_place(&self, values: &mut [f32]) {
        let len = values.len();
        let p = values.as_mut_ptr();
        // SAFETY: `p` spans `len` readable and writable values; each is read before it is
        // written, at the same index.
        unsafe { self.apply_raw(p, p, len) }
    }

    /// The pass from `x` into `y` (`x`'s length; every slot written).
    pub(crate) fn apply_into<T: crate::row_tasks::Slot>(&self, x: &[f32], y: &mut [T]) {
        assert_eq!(x.len(), y.len(), "affine row: lengths differ");
        // SAFETY: `x` spans `y.len()` readable values, `y` as many writable f32 slots
        // (`Slot::f32_slots`), and the two do not overlap (one is borrowed mutably).
        unsafe { self.apply_raw(x.as_ptr(), T::f32_slots(y), x.len()) }
    }

    /// # Safety
    /// `x` must be readable and `y` writable for `len` f32 values; they may be the same
    /// pointer, not otherwise overlap. A shortcut must hold at least `len` values.
    unsafe fn apply_raw(&self, x: *const f32, y: *mut f32, len: usize) {
        assert!(self.shortcut.is_none_or(|s| s.len() >= len));
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        let whole = {
            let s = self.shortcut.map_or(std::ptr::null(), <[f32]>::as_ptr);
            let (a, b) = (self.a, self.b.unwrap_or(0.0));
            // SAFETY: as the caller guarantees; the kernels stay below `len / 8 * 8`, and `s`
            // is read only where there is a shortcut. One kernel per combination of terms, so
            // that the loop holds no test.
            unsafe {
                let kernel = match (self.b.is_some(), self.shortcut.is_some(), self.relu) {
                    (true, true, true) => whole_vectors::<true, true, true>,
                    (true, true, false) => whole_vectors::<true, true, false>,
                    (true, false, true) => whole_vectors::<true, false, true>,
                    (true, false, false) => whole_vectors::<true, false, false>,
                    (false, true, true) => whole_vectors::<false, true, true>,
                    (false, true, false) => whole_vectors::<false, true, false>,
                    (false, false, true) => whole_vectors::<false, false, true>,
                    (false, false, false) => whole_vectors::<false, false, false>,
                };
                kernel(x, y, len, (a, b), s)
            }
        };
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
        let whole = 0;
        for i in whole..len {
            // SAFETY: `i < len`, and value `i` is read before it is written.
            unsafe { *y.add(i) = self.value(i, *x.add(i)) };
        }
    }
}

/// The first `len / 8 * 8` values of [`RowAffine::apply_raw`] in AVX2 registers, with the shift
/// `b` when `SHIFT`, the shortcut `s` when `SHORTCUT` and the ReLU when `RELU`; returns how
/// many.
///
/// # Safety
/// As [`RowAffine::apply_raw`]; with `SHORTCUT`, `s` readable for `len` values.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
unsafe fn whole_vectors<const SHIFT: bool, const SHORTCUT: bool, const RELU: bool>(
    x: *const f32,
    y: *mut f32,
    len: usize,
    (a, b): (f32, f32),
    s: *const f32,
) -> usize {
    use std::arch::x86_64::*;
    const WIDTH: usize = 8;
    let whole = len / WIDTH * WIDTH;
    // SAFETY: this build enables AVX2 (the cfg above); every load and store is of 8
    // consecutive f32 below `whole <= len`, in bounds as the caller guarantees.
    unsafe {
        let (a, b, zero) = (_mm256_set1_ps(a), _mm256_set1_ps(b), _mm256_setzero_ps());
        for i in (0..whole).step_by(WIDTH) {
            let mut t = _mm256_mul_ps(_mm256_loadu_ps(x.add(i)), a);
            if SHIFT {
                t = _mm256_add_ps(t, b);
            }
            if SHORTCUT {
                t = _mm256_add_ps(t, _mm256_loadu_ps(s.add(i)));
            }
            if RELU {
                // `max(t, +0)` gives +0 for NaN and for either zero, as `f32::max(t, 0.0)`.
                t = _mm256_max_ps(t, zero);
            }
            _mm256_storeu_ps(y.add(i), t);
        }
    }
    whole
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant over rows of 16, 49 and 3 values has the scalar expression's bits, value
    /// by value: signs, signed zeros, NaN and infinities in the input and the shortcut.
    #[test]
    fn rows_equal_the_scalar_expression_bit_for_bit() {
        for len in [16, 49, 3, 0] {
            let mut x: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let mut s: Vec<f32> = (0..len)
                .map(|i| ((i * 53 % 97) as f32 - 40.0) / 3.0)
                .collect();
            for (i, v) in [f32::NAN, -0.0, 0.0, f32::INFINITY, f32::NEG_INFINITY]
                .into_iter()
                .enumerate()
            {
                if i < len {
                    x[i] = v;
                }
                if len > 8 + i {
                    x[8 + i] = v;
                    s[(8 + 2 * i) % len] = -v;
                }
            }
            if len > 20 {
                // A product of -0 and a shortcut of -0: `-0 + -0` is -0 before the ReLU.
                x[20] = -0.0;
                s[20] = -0.0;
            }
            for a in [1.5f32, -0.75, 0.0] {
                for b in [None, Some(0.25f32), Some(-0.0)] {
                    for shortcut in [None, Some(&s[..])] {
                        for relu in [false, true] {
                            let row = RowAffine {
                                a,
                                b,
                                shortcut,
                                relu,
                            };
                            let want: Vec<u32> = x
                                .iter()
                                .enumerate()
                                .map(|(i, &v)| row.value(i, v).to_bits())
                                .collect();
                            let mut y = vec![f32::NAN; len];
                            row.apply_into(&x, &mut y);
                            let got: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                            assert_eq!(got, want, "{len} values, {row:?}");
                            let mut in_place = x.clone();
                            row.apply_in_place(&mut in_place);
                            let got: Vec<u32> = in_place.iter().map(|v| v.to_bits()).collect();
                            assert_eq!(got, want, "in place, {len} values, {row:?}");
                        }
                    }
                }
            }
        }
    }
}
