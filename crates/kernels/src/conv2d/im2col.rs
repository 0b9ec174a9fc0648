//! im2col and its adjoint col2im for one (image, group) unit.
//!
//! The column matrix is `(patch_len, OH*OW)` row-major; row `(c*KH + ky)*KW + kx` holds, for
//! every output pixel, the input value under kernel tap `(c, ky, kx)` (zero in the padding).
//! This is the layout whose product with the `(C_out/groups, patch_len)` weight block gives
//! the NCHW output block directly.

use super::geometry::ConvGeometry;

/// Output columns `ox` whose input column `ox*stride + kx - padding` lies inside `0..in_w`.
fn valid_span(
    out_len: usize,
    in_len: usize,
    tap: usize,
    stride: usize,
    padding: usize,
) -> (usize, usize) {
    // First ox with ox*stride >= padding - tap.
    let lo = if padding > tap {
        (padding - tap).div_ceil(stride)
    } else {
        0
    };
    // Last ox with ox*stride + tap - padding <= in_len - 1.
    let hi = if in_len + padding > tap {
        ((in_len - 1 + padding - tap) / stride + 1).min(out_len)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// True when each kernel tap reads a shifted copy of the whole image: stride 1 and "same"
/// width (`OW == W`). Output pixel `q = oy*W + ox` then reads input pixel `q + shift` of the
/// flattened plane, so a tap row is one block copy plus zeroed edge columns.
fn same_width_unit_stride(g: &ConvGeometry) -> bool {
    g.stride == 1 && g.out_w == g.in_w
}

/// For a same-width stride-1 geometry and tap `(ky, kx)`: the flat input offset `shift` and
/// the output range `q_start..q_end` whose reads `q + shift` stay inside the plane and in
/// valid rows. Inside that range only the columns outside `ox_lo..ox_hi` are padding.
fn tap_block(g: &ConvGeometry, ky: usize, kx: usize) -> (isize, usize, usize) {
    let (w, p) = (g.in_w as isize, g.padding as isize);
    let shift = (ky as isize - p) * w + (kx as isize - p);
    let (oy_lo, oy_hi) = valid_span(g.out_h, g.in_h, ky, 1, g.padding);
    let plane = (g.in_h * g.in_w) as isize;
    let start = ((oy_lo * g.out_w) as isize).max(-shift);
    let end = ((oy_hi * g.out_w) as isize).min(plane - shift);
    if start >= end {
        // The tap never lands inside the image: an empty block (all padding).
        return (0, 0, 0);
    }
    (shift, start as usize, end as usize)
}

/// Fills `col` (`patch_len * OH*OW` values) from one unit of input (`C_in/groups * H * W`).
pub fn im2col(g: &ConvGeometry, x_unit: &[f32], col: &mut [f32]) {
    assert_eq!(x_unit.len(), g.in_unit_len(), "im2col: input unit length");
    assert_eq!(
        col.len(),
        g.patch_len() * g.out_pixels(),
        "im2col: column buffer length"
    );
    im2col_strided(g, x_unit, col, g.out_pixels());
}

/// im2col of the input planes `planes` (any whole number of `H * W` channel planes) into rows
/// `row_stride` apart: tap row `r` (`OH*OW` values) goes to `col[r * row_stride..]`. With
/// `row_stride > OH*OW` the rows of several images can sit side by side in one wide matrix.
///
/// Panics if `col` cannot hold every row.
pub fn im2col_strided(g: &ConvGeometry, planes: &[f32], col: &mut [f32], row_stride: usize) {
    let (kh, kw, s, p) = (g.kernel_h, g.kernel_w, g.stride, g.padding);
    let (h, w, oh, ow) = (g.in_h, g.in_w, g.out_h, g.out_w);
    let out_pixels = oh * ow;
    let rows_needed = planes.len() / (h * w) * kh * kw;
    assert!(
        planes.len().is_multiple_of(h * w)
            && row_stride >= out_pixels
            && (rows_needed == 0 || col.len() >= (rows_needed - 1) * row_stride + out_pixels),
        "im2col: {} input values and {} column values do not fit rows of {out_pixels} every {row_stride}",
        planes.len(),
        col.len()
    );
    let mut rows = col
        .chunks_mut(row_stride)
        .map(|chunk| &mut chunk[..out_pixels]);
    if same_width_unit_stride(g) {
        for plane in planes.chunks_exact(h * w) {
            for ky in 0..kh {
                for kx in 0..kw {
                    let Some(row) = rows.next() else { return };
                    let (shift, start, end) = tap_block(g, ky, kx);
                    row[..start].fill(0.0);
                    row[end..].fill(0.0);
                    let src = start as isize + shift;
                    row[start..end]
                        .copy_from_slice(&plane[src as usize..src as usize + end - start]);
                    zero_padding_columns(g, kx, &mut row[start..end], start);
                }
            }
        }
        return;
    }
    if out_pixels <= SMALL_MAP && kh * kw > 1 {
        return small_map_rows(g, planes, &mut rows);
    }
    // Strided reads go through the row phases when every phase is read (`splits_phases`).
    let mut phases = splits_phases(g).then(|| RowPhases::new(g));
    for plane in planes.chunks_exact(h * w) {
        if let Some(phases) = phases.as_mut() {
            phases.split(plane);
        }
        for ky in 0..kh {
            let (oy_lo, oy_hi) = valid_span(oh, h, ky, s, p);
            for kx in 0..kw {
                let (ox_lo, ox_hi) = valid_span(ow, w, kx, s, p);
                let Some(row) = rows.next() else { return };
                for (oy, out_row) in row.chunks_exact_mut(ow).enumerate() {
                    if oy < oy_lo || oy >= oy_hi {
                        out_row.fill(0.0);
                        continue;
                    }
                    out_row[..ox_lo].fill(0.0);
                    out_row[ox_hi..].fill(0.0);
                    if ox_lo >= ox_hi {
                        continue;
                    }
                    let (iy, ix_lo) = (oy * s + ky - p, ox_lo * s + kx - p);
                    let dst = &mut out_row[ox_lo..ox_hi];
                    match &phases {
                        Some(phases) => dst.copy_from_slice(phases.run(iy, ix_lo, dst.len())),
                        None => {
                            let src = &plane[iy * w..(iy + 1) * w][ix_lo..];
                            if s == 1 {
                                dst.copy_from_slice(&src[..dst.len()]);
                            } else {
                                for (j, d) in dst.iter_mut().enumerate() {
                                    *d = src[j * s];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Output maps of at most this many pixels take [`small_map_rows`] (kernels larger than 1x1;
/// a 1x1 stride-2 layer reads a quarter of its plane, and copying the plane first was slower).
const SMALL_MAP: usize = 64;

/// The strided im2col of small output maps: every tap row is gathered through a table of
/// source offsets made once per call (the plane's values, then one zero for the padding),
/// where the general path copies each output row's run of a few values on its own.
fn small_map_rows<'a>(
    g: &ConvGeometry,
    planes: &[f32],
    rows: &mut impl Iterator<Item = &'a mut [f32]>,
) {
    let (kh, kw, s, p) = (g.kernel_h, g.kernel_w, g.stride, g.padding);
    let (h, w, oh, ow) = (g.in_h, g.in_w, g.out_h, g.out_w);
    let plane_len = h * w;
    // offsets[tap * OH*OW + j]: where tap row `tap`'s pixel `j` reads its plane, or
    // `plane_len` (the zero after it) in the padding.
    let mut offsets = Vec::with_capacity(kh * kw * oh * ow);
    for ky in 0..kh {
        for kx in 0..kw {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (iy, ix) = ((oy * s + ky).wrapping_sub(p), (ox * s + kx).wrapping_sub(p));
                    offsets.push(if iy < h && ix < w {
                        iy * w + ix
                    } else {
                        plane_len
                    });
                }
            }
        }
    }
    let mut padded = vec![0.0f32; plane_len + 1];
    for plane in planes.chunks_exact(plane_len) {
        padded[..plane_len].copy_from_slice(plane);
        for taps in offsets.chunks_exact(oh * ow) {
            let Some(row) = rows.next() else { return };
            for (d, &at) in row.iter_mut().zip(taps) {
                *d = padded[at];
            }
        }
    }
}

/// In a same-width block `block` of one tap row starting at output pixel `start`, zeroes the
/// columns whose input column lies in the padding (they wrapped onto the neighbouring row).
fn zero_padding_columns(g: &ConvGeometry, kx: usize, block: &mut [f32], start: usize) {
    let ow = g.out_w;
    let (ox_lo, ox_hi) = valid_span(ow, g.in_w, kx, 1, g.padding);
    if ox_lo == 0 && ox_hi == ow {
        return;
    }
    let end = start + block.len();
    let mut row_start = start - start % ow;
    while row_start < end {
        for ox in (0..ox_lo).chain(ox_hi..ow) {
            let q = row_start + ox;
            if q >= start && q < end {
                block[q - start] = 0.0;
            }
        }
        row_start += ow;
    }
}

/// Adds the columns `col` back onto one unit of input gradient (`C_in/groups * H * W`), the
/// adjoint of [`im2col`]: every tap's value goes to the input pixel it was read from.
/// `col` may be used as scratch (its values are unspecified afterwards). With a stride of 2 or
/// more (and `KW >= stride`) the taps are first summed per input pixel, then added to `dx_unit`:
/// the same values as adding them one by one when `dx_unit` starts at zero, as every caller's
/// does.
pub fn col2im_add(g: &ConvGeometry, col: &mut [f32], dx_unit: &mut [f32]) {
    let (kh, kw, s, p) = (g.kernel_h, g.kernel_w, g.stride, g.padding);
    let (h, w, oh, ow) = (g.in_h, g.in_w, g.out_h, g.out_w);
    let out_pixels = oh * ow;
    assert_eq!(
        dx_unit.len(),
        g.in_unit_len(),
        "col2im: gradient unit length"
    );
    assert_eq!(
        col.len(),
        g.patch_len() * out_pixels,
        "col2im: column buffer length"
    );
    if same_width_unit_stride(g) {
        let mut rows = col.chunks_exact_mut(out_pixels);
        for plane in dx_unit.chunks_exact_mut(h * w) {
            for ky in 0..kh {
                for kx in 0..kw {
                    let Some(row) = rows.next() else { return };
                    let (shift, start, end) = tap_block(g, ky, kx);
                    let block = &mut row[start..end];
                    zero_padding_columns(g, kx, block, start);
                    let dst = (start as isize + shift) as usize;
                    for (d, v) in plane[dst..dst + block.len()].iter_mut().zip(block.iter()) {
                        *d += *v;
                    }
                }
            }
        }
        return;
    }
    // Strided sums go through the row phases when every phase is written (`splits_phases`).
    let mut phases = splits_phases(g).then(|| RowPhases::new(g));
    let mut rows = col.chunks_exact(out_pixels);
    for plane in dx_unit.chunks_exact_mut(h * w) {
        if let Some(phases) = phases.as_mut() {
            phases.clear();
        }
        for ky in 0..kh {
            let (oy_lo, oy_hi) = valid_span(oh, h, ky, s, p);
            for kx in 0..kw {
                let (ox_lo, ox_hi) = valid_span(ow, w, kx, s, p);
                let Some(row) = rows.next() else { return };
                if ox_lo >= ox_hi {
                    continue;
                }
                let ix_lo = ox_lo * s + kx - p;
                for oy in oy_lo..oy_hi {
                    let iy = oy * s + ky - p;
                    let src = &row[oy * ow + ox_lo..oy * ow + ox_hi];
                    match phases.as_mut() {
                        Some(phases) => {
                            let dst = phases.run_mut(iy, ix_lo, src.len());
                            for (d, v) in dst.iter_mut().zip(src) {
                                *d += *v;
                            }
                        }
                        None => {
                            let dst = &mut plane[iy * w + ix_lo..(iy + 1) * w];
                            if s == 1 {
                                for (d, v) in dst.iter_mut().zip(src) {
                                    *d += *v;
                                }
                            } else {
                                for (j, v) in src.iter().enumerate() {
                                    dst[j * s] += *v;
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(phases) = &phases {
            phases.merge_add(plane);
        }
    }
}

/// True when a strided geometry reads through [`RowPhases`]: every phase of an input row is
/// read by some kernel column (`KW >= stride`), so splitting a plane once (`H*W` moves) replaces
/// `KH*KW*OH*OW` strided reads by contiguous copies. A 1x1 stride-2 convolution, which reads
/// one phase of every other row, keeps the direct strided reads.
fn splits_phases(g: &ConvGeometry) -> bool {
    g.stride > 1 && g.kernel_w >= g.stride
}

/// One input plane with each row split into its `stride` phases: phase `r` of row `iy` holds
/// the columns `r, r + stride, r + 2*stride, ..`, contiguous. The taps of a strided
/// convolution read every `stride`-th column, so each (tap, output row) run is one contiguous
/// slice of one phase.
struct RowPhases {
    /// `(H * stride)` rows of `phase_len` values: row `iy * stride + r` is phase `r` of `iy`.
    values: Vec<f32>,
    in_w: usize,
    stride: usize,
    phase_len: usize,
}

impl RowPhases {
    fn new(g: &ConvGeometry) -> Self {
        let phase_len = g.in_w.div_ceil(g.stride);
        Self {
            values: vec![0.0; g.in_h * g.stride * phase_len],
            in_w: g.in_w,
            stride: g.stride,
            phase_len,
        }
    }

    /// Splits `plane` (`H * W` values) into its row phases.
    fn split(&mut self, plane: &[f32]) {
        let (w, s, len) = (self.in_w, self.stride, self.phase_len);
        for (row, phases) in plane
            .chunks_exact(w)
            .zip(self.values.chunks_exact_mut(s * len))
        {
            for (r, phase) in phases.chunks_exact_mut(len).enumerate() {
                for (d, v) in phase.iter_mut().zip(row.iter().skip(r).step_by(s)) {
                    *d = *v;
                }
            }
        }
    }

    /// Zeroes every phase (before [`Self::run_mut`] accumulates into them).
    fn clear(&mut self) {
        self.values.fill(0.0);
    }

    /// Index of input column `ix` of row `iy`, and how many values its phase holds from there.
    fn locate(&self, iy: usize, ix: usize) -> (usize, usize) {
        let (r, j) = (ix % self.stride, ix / self.stride);
        let start = (iy * self.stride + r) * self.phase_len + j;
        (start, (self.in_w - r).div_ceil(self.stride) - j)
    }

    /// Input columns `ix, ix + stride, ..` (`n` of them) of row `iy`.
    fn run(&self, iy: usize, ix: usize, n: usize) -> &[f32] {
        let (start, room) = self.locate(iy, ix);
        assert!(n <= room, "im2col: a run of {n} past its row phase");
        &self.values[start..start + n]
    }

    /// [`Self::run`], writable.
    fn run_mut(&mut self, iy: usize, ix: usize, n: usize) -> &mut [f32] {
        let (start, room) = self.locate(iy, ix);
        assert!(n <= room, "col2im: a run of {n} past its row phase");
        &mut self.values[start..start + n]
    }

    /// Adds every phase back onto the columns of `plane` it was split from.
    fn merge_add(&self, plane: &mut [f32]) {
        let (w, s, len) = (self.in_w, self.stride, self.phase_len);
        for (row, phases) in plane
            .chunks_exact_mut(w)
            .zip(self.values.chunks_exact(s * len))
        {
            for (r, phase) in phases.chunks_exact(len).enumerate() {
                for (d, v) in row.iter_mut().skip(r).step_by(s).zip(phase) {
                    *d += *v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Result;

    /// im2col by the definition, one value at a time.
    fn im2col_naive(g: &ConvGeometry, x: &[f32]) -> Vec<f32> {
        let mut col = Vec::new();
        for c in 0..g.group_in_channels() {
            for ky in 0..g.kernel_h {
                for kx in 0..g.kernel_w {
                    for oy in 0..g.out_h {
                        for ox in 0..g.out_w {
                            let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                            let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                            let inside = iy >= 0
                                && ix >= 0
                                && (iy as usize) < g.in_h
                                && (ix as usize) < g.in_w;
                            col.push(if inside {
                                x[(c * g.in_h + iy as usize) * g.in_w + ix as usize]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
        }
        col
    }

    #[test]
    fn im2col_matches_definition_and_col2im_is_its_adjoint() -> Result<()> {
        for &(h, w, k, s, p) in &[
            (5, 7, 3, 1, 1),
            (6, 5, 3, 2, 1),
            (9, 8, 7, 2, 3),
            (4, 4, 1, 2, 0),
            (3, 3, 3, 1, 3),
            (7, 7, 3, 3, 0),
            (6, 9, 3, 1, 1),
            (9, 4, 7, 1, 3),
            (3, 2, 7, 1, 3),
            (5, 6, 5, 1, 2),
            (3, 2, 3, 3, 1),
            (8, 11, 5, 2, 2),
            // Outputs of more than 64 pixels: the general strided path (`small_map_rows`
            // takes the smaller ones).
            (20, 22, 3, 2, 1),
            (24, 19, 7, 2, 3),
            (30, 25, 5, 3, 2),
            (17, 19, 1, 2, 0),
        ] {
            let g = ConvGeometry::new(&[1, 2, h, w], &[1, 2, k, k], s, p, 1)?;
            let x: Vec<f32> = (0..g.in_unit_len())
                .map(|i| (i as f32 * 0.37).sin())
                .collect();
            let mut col = vec![f32::NAN; g.patch_len() * g.out_pixels()];
            im2col(&g, &x, &mut col);
            assert_eq!(col, im2col_naive(&g, &x), "im2col h{h} w{w} k{k} s{s} p{p}");
            // <im2col(x), c> == <x, col2im(c)> for any c.
            let c: Vec<f32> = (0..col.len()).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut back = vec![0.0f32; x.len()];
            col2im_add(&g, &mut c.clone(), &mut back);
            let lhs: f64 = col
                .iter()
                .zip(&c)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            let rhs: f64 = x
                .iter()
                .zip(&back)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()),
                "adjoint h{h} w{w} k{k} s{s} p{p}: {lhs} vs {rhs}"
            );
        }
        Ok(())
    }

    #[test]
    fn strided_rows_place_images_side_by_side() -> Result<()> {
        // Three images' columns in one wide matrix, and a band of channels 1..3 of 3.
        for &(h, w, k, s, p) in &[
            (5, 7, 3, 1, 1),
            (6, 5, 3, 2, 1),
            (4, 4, 1, 1, 0),
            (3, 2, 7, 1, 3),
        ] {
            let g = ConvGeometry::new(&[3, 3, h, w], &[1, 3, k, k], s, p, 1)?;
            let (rows, px) = (g.patch_len(), g.out_pixels());
            let x: Vec<f32> = (0..3 * g.in_unit_len())
                .map(|i| (i as f32 * 0.29).sin())
                .collect();
            let width = 3 * px;
            let mut wide = vec![f32::NAN; rows * width];
            for b in 0..3 {
                im2col_strided(&g, g.input_unit(&x, b), &mut wide[b * px..], width);
            }
            let band_rows = rows / 3;
            for b in 0..3 {
                let unit = im2col_naive(&g, g.input_unit(&x, b));
                let mut band = vec![f32::NAN; 2 * band_rows * px];
                let planes = &g.input_unit(&x, b)[h * w..];
                im2col_strided(&g, planes, &mut band, px);
                for r in 0..rows {
                    let want = &unit[r * px..(r + 1) * px];
                    assert_eq!(&wide[r * width + b * px..r * width + (b + 1) * px], want);
                    if r >= band_rows {
                        let got = &band[(r - band_rows) * px..(r - band_rows + 1) * px];
                        assert_eq!(got, want, "channel band h{h} w{w} k{k} s{s} p{p}");
                    }
                }
            }
        }
        Ok(())
    }
}
