//! A bounds-checked front to `gemm::gemm` for f32 matrices given as strided slices.

use super::schedule::SharedOutput;
use gemm::Parallelism;
use rayon::prelude::*;

/// A read-only matrix view: element `(r, c)` is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major `rows x cols` matrix at the start of `data`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// A row-major `rows x cols` matrix whose rows start `row_stride` values apart, at the
    /// start of `data` (rows of several matrices can be interleaved in one buffer).
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// A `rows x cols` matrix with element `(r, c)` at `data[r * row_stride + c * col_stride]`
    /// (a weight tensor's taps read as one matrix, for example).
    pub fn with_strides(
        data: &'a [f32],
        (rows, cols): (usize, usize),
        (row_stride, col_stride): (usize, usize),
    ) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// The same values read as the transposed matrix (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Columns `first..first + cols` of the view (no copy).
    fn columns(self, first: usize, cols: usize) -> Self {
        assert!(first + cols <= self.cols, "matmul: columns past the view");
        Self {
            data: &self.data[first * self.col_stride..],
            cols,
            ..self
        }
    }

    /// Panics unless every element of the view lies inside `data`.
    fn check(&self, what: &str) {
        let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
        assert!(
            self.rows > 0 && self.cols > 0 && last < self.data.len(),
            "matmul: {what} view {}x{} strides ({}, {}) overruns {} values",
            self.rows,
            self.cols,
            self.row_stride,
            self.col_stride,
            self.data.len()
        );
    }
}

/// `dst (m x n, row-major) = lhs (m x k) @ rhs (k x n)`, or `dst += lhs @ rhs` when
/// `accumulate`. `parallelism` is handed to gemm: `Parallelism::None` inside a parallel loop.
pub fn matmul(
    dst: &mut [f32],
    accumulate: bool,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    parallelism: Parallelism,
) {
    matmul_strided(dst, false, accumulate, lhs, rhs, parallelism)
}

/// As [`matmul`], but `dst` is stored column-major (`dst[r + c * m]`) when `dst_column_major`.
///
/// gemm's kernels prefer a column-major destination; with a row-major one it multiplies the
/// transposes instead, which swaps which operand it must repack.
pub fn matmul_strided(
    dst: &mut [f32],
    dst_column_major: bool,
    accumulate: bool,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    parallelism: Parallelism,
) {
    let (m, n) = checked_dims(lhs, rhs);
    assert_eq!(dst.len(), m * n, "matmul: destination length for {m}x{n}");
    let (dst_rs, dst_cs) = if dst_column_major { (1, m) } else { (n, 1) };
    // SAFETY: `dst` is a dense m x n block of exactly `m * n` values (row- or column-major),
    // borrowed mutably and not aliased by the shared `lhs`/`rhs` borrows; the views were
    // checked by `checked_dims`.
    unsafe {
        gemm_into(
            dst.as_mut_ptr(),
            (dst_rs, dst_cs),
            accumulate,
            lhs,
            rhs,
            parallelism,
        )
    }
}

/// The fewest columns (rows) a piece of [`matmul_by_columns`] ([`matmul_by_rows`]) has: more
/// than 64, so that no piece takes gemm's small-matrix path (both sides at most 64, depth
/// blocks of `k.min(512)`), whose depth blocks differ from the whole product's once `k`
/// exceeds 512.
const MIN_PIECE: usize = 65;

/// `dst (m x n, row-major) = lhs (m x k) @ rhs (k x n)` on every rayon thread: the columns of
/// `dst` cut into one contiguous piece per thread, of near-equal widths and each of at least
/// [`MIN_PIECE`] (not cut when there are too few), each piece a single-threaded gemm.
/// With gemm's own threads the calling thread packs each block of `lhs` while the pool waits;
/// here every thread packs what its piece reads (measured 5-8% faster on the whole-batch
/// products with a summed dimension of 1024 or more, level on the others).
///
/// The values equal [`matmul`]'s bit for bit, whatever the thread count: outside its
/// small-matrix path, which no piece takes and which a product cut here would not have taken
/// whole either, gemm sums each output over `k` in blocks whose size depends on `k` alone
/// (`gemm_common::cache::kernel_params`), so cutting the columns changes no order of
/// additions. The tests check it, the small-matrix boundary included.
pub fn matmul_by_columns(dst: &mut [f32], lhs: MatRef<'_>, rhs: MatRef<'_>) {
    by_pieces(dst, lhs, rhs, Cut::Columns)
}

/// `dst (m x n, row-major) = lhs (m x k) @ rhs (k x n)` on every rayon thread, as
/// [`matmul_by_columns`] but with the rows of `dst` cut into the pieces (each of at least
/// [`MIN_PIECE`] rows), so that each thread packs only the rows of `lhs` its piece
/// reads. The values equal [`matmul`]'s bit for bit whatever the thread count, for the reason
/// `matmul_by_columns` gives (cutting rows changes no order of additions either).
///
/// Measured faster than the cut by columns for the whole-batch input gradients
/// (`batched.rs`, `lhs` the transposed weight) on the AVX2-only AMD Zen 3: `conv_passes`,
/// two threads, best of 7, 3 alternating rounds, 1x1 layers of ResNet bottlenecks: (2048 ->
/// 1024) on 4x4 maps 16.97-17.81 -> 14.45-15.32 ms at batch 32 and 10.52-10.77 -> 7.94-8.63 at
/// batch 16; (1024 -> 2048) on 4x4 14.89-15.25 -> 13.82-13.94; (1024 -> 512) on 7x7
/// 6.57-6.89 -> 5.63-6.03 at batch 16, level at batch 32 (11.68-13.01 against 10.90-14.15);
/// (512 -> 1024) on 7x7 10.74-13.98 -> 10.26-10.79; the stride-2 (1024 -> 2048) from 7x7 to
/// 4x4 15.93-16.36 -> 14.38-14.68; the dense stride-2 input gradient's phase products
/// (`input_grad_phases.rs`) from 7x7 to 4x4 with 512 channels 10.26-10.80 -> 9.99-10.16 at
/// batch 16, 19.39-23.32 -> 18.38-18.92 at 32, level from 14x14.
pub fn matmul_by_rows(dst: &mut [f32], lhs: MatRef<'_>, rhs: MatRef<'_>) {
    by_pieces(dst, lhs, rhs, Cut::Rows)
}

/// Which dimension of `dst` [`by_pieces`] cuts between the threads.
#[derive(Clone, Copy)]
enum Cut {
    Rows,
    Columns,
}

/// `dst (m x n, row-major) = lhs @ rhs`, the rows or the columns of `dst` cut into one
/// contiguous piece per rayon thread, each of at least [`MIN_PIECE`] (not cut when there are
/// too few), each piece a single-threaded gemm.
fn by_pieces(dst: &mut [f32], lhs: MatRef<'_>, rhs: MatRef<'_>, cut: Cut) {
    let (m, n) = checked_dims(lhs, rhs);
    assert_eq!(dst.len(), m * n, "matmul: destination length for {m}x{n}");
    let len = match cut {
        Cut::Rows => m,
        Cut::Columns => n,
    };
    let pieces = rayon::current_num_threads().min(len / MIN_PIECE);
    if pieces < 2 {
        return matmul(dst, false, lhs, rhs, super::schedule::gemm_threads());
    }
    // The pieces write disjoint rows (or columns) of `dst`.
    let out = SharedOutput::new(dst);
    (0..pieces).into_par_iter().for_each(|p| {
        // Piece `p`: rows (columns) `len * p / pieces ..`, at least `len / pieces` of them.
        let (first, count) = (len * p / pieces, len * (p + 1) / pieces - len * p / pieces);
        let (offset, lhs, rhs) = match cut {
            Cut::Rows => (first * n, lhs.t().columns(first, count).t(), rhs),
            Cut::Columns => (first, lhs, rhs.columns(first, count)),
        };
        // SAFETY: piece `p` writes the elements `(r, c)` of its views' product at
        // `offset + r * n + c`: rows `first..first + count` (or columns) of the dense
        // row-major m x n `dst`, inside `dst` and disjoint from every other piece's; `out`
        // holds `dst`'s borrow until all pieces end; the views were checked by
        // `checked_dims` and cut inside them.
        unsafe {
            gemm_into(
                out.start().add(offset),
                (n, 1),
                false,
                lhs,
                rhs,
                Parallelism::None,
            )
        }
    });
}

/// `dst = lhs @ rhs` on every rayon thread for a product whose `lhs` is a transposed weight
/// (the input gradients' `W^T @ dY`): cut by rows ([`matmul_by_rows`]) where AVX2 runs without
/// AVX-512, where that was measured faster; on AMD Zen 4 one gemm on gemm's own threads from
/// [`GEMM_THREADS_COLUMNS`] columns on; by columns ([`matmul_by_columns`]) elsewhere. The same
/// values every way: gemm's threads split the rows and columns of `dst`, never the summed
/// dimension, whose blocks depend on its length alone (`gemm_common::cache::kernel_params`).
pub fn matmul_transposed_weight(dst: &mut [f32], lhs: MatRef<'_>, rhs: MatRef<'_>) {
    if crate::cpu_features::avx2_only() {
        matmul_by_rows(dst, lhs, rhs)
    } else if crate::cpu_features::zen4() && rhs.cols >= GEMM_THREADS_COLUMNS {
        matmul(dst, false, lhs, rhs, super::schedule::gemm_threads())
    } else {
        matmul_by_columns(dst, lhs, rhs)
    }
}

/// Columns from which [`matmul_transposed_weight`] runs one gemm on gemm's threads on AMD Zen 4,
/// where the cut by columns has each thread pack the whole transposed weight. Measured there
/// with `conv_passes` (wall clock of 2 threads, best of 7, 3 alternating rounds, best / median,
/// the whole-batch input gradients of `batched.rs`), cut by columns -> by rows -> gemm's
/// threads: ResNeXt-50's and ResNet-50's 1x1 layers on 4x4 maps at batch 32 (512 columns)
/// (2048 -> 1024) 14.51 / 15.35 -> 12.68 / 13.79 -> 11.92 / 11.93 ms, (1024 -> 2048) 12.81 /
/// 13.12 -> 12.13 / 12.61 -> 12.26 / 12.38, (2048 -> 512) 8.37 / 8.58 -> 7.03 / 7.11 -> 6.09 /
/// 6.49, (512 -> 2048) 6.52 / 6.62 -> 6.04 / 6.14 -> 6.07 / 6.34, stride 2 from 7x7 (1024 ->
/// 2048) 14.48 / 14.94 -> 13.02 / 13.18 -> 12.86 / 13.07; at batch 16 (256 columns) the cut by
/// columns stays fastest ((2048 -> 1024) 5.32 / 5.40 -> 7.28 / 7.42 -> 6.42 / 6.48).
const GEMM_THREADS_COLUMNS: usize = 512;

/// `(m, n)` of `lhs @ rhs`, after checking that the inner dimensions agree, the product is
/// not empty and both views lie inside their slices.
fn checked_dims(lhs: MatRef<'_>, rhs: MatRef<'_>) -> (usize, usize) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "matmul: inner dimensions {k} and {}", rhs.rows);
    assert!(
        m > 0 && n > 0 && k > 0,
        "matmul: empty product {m}x{k} @ {k}x{n}"
    );
    lhs.check("lhs");
    rhs.check("rhs");
    (m, n)
}

/// `dst = lhs @ rhs` (or `+=` when `accumulate`), `dst` element `(r, c)` at
/// `dst + r * dst_rs + c * dst_cs`.
///
/// # Safety
/// `lhs` and `rhs` passed `checked_dims`; every element `(r, c)`, `r < lhs.rows`,
/// `c < rhs.cols`, of `dst` lies in one allocation that nothing else reads or writes while
/// this runs.
unsafe fn gemm_into(
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    parallelism: Parallelism,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    // SAFETY: every index gemm reads is `r * row_stride + c * col_stride` with `r < rows`,
    // `c < cols` of a view checked to lie inside its slice; the destination is the caller's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_transposed_and_accumulated_products() {
        // lhs 2x3, rhs 3x2.
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
        let mut c = [0.0f32; 4];
        let (lhs, rhs) = (MatRef::row_major(&a, 2, 3), MatRef::row_major(&b, 3, 2));
        matmul(&mut c, false, lhs, rhs, Parallelism::None);
        assert_eq!(c, [58.0, 64.0, 139.0, 154.0]);
        matmul(&mut c, true, lhs, rhs, Parallelism::None);
        assert_eq!(c, [116.0, 128.0, 278.0, 308.0]);
        // a^T (3x2) @ a (2x3) = 3x3 Gram matrix of a's columns.
        let mut g = [0.0f32; 9];
        matmul(&mut g, false, lhs.t(), lhs, Parallelism::None);
        assert_eq!(g, [17.0, 22.0, 27.0, 22.0, 29.0, 36.0, 27.0, 36.0, 45.0]);
        // Column-major destination: the transpose of the row-major result.
        let mut ct = [0.0f32; 4];
        matmul_strided(&mut ct, true, false, lhs, rhs, Parallelism::None);
        assert_eq!(ct, [58.0, 139.0, 64.0, 154.0]);
    }

    /// Cut by columns over 1-3 threads, products equal the single-threaded gemm bit for bit:
    /// summed dimensions below and above gemm's depth blocks (kc >= 512), a transposed
    /// right-hand side (the weight gradient's), widths that do not divide evenly, and one too
    /// narrow to cut; likewise cut by rows, on the transposed products.
    #[test]
    fn products_cut_by_columns_or_rows_equal_one_gemm_bit_for_bit() {
        for (m, k, n, transposed) in [
            (24, 40, 200, false),
            (32, 1100, 390, false),
            (20, 700, 333, true),
            (16, 48, 100, false),
            // At most 64 rows and 128-195 columns: pieces of 64 or fewer columns would take
            // gemm's small-matrix depth blocks (`k.min(512)`) instead of the whole product's.
            (32, 1100, 128, false),
            (64, 900, 195, true),
        ] {
            let a = super::super::test_values(m * k, 1);
            let b = super::super::test_values(k * n, 2);
            let lhs = MatRef::row_major(&a, m, k);
            let rhs = if transposed {
                MatRef::row_major(&b, n, k).t()
            } else {
                MatRef::row_major(&b, k, n)
            };
            let mut want = vec![0.0f32; m * n];
            matmul(&mut want, false, lhs, rhs, Parallelism::None);
            let shape = format!("{m}x{k}x{n} transposed {transposed}");
            same_bits_in_pools(&want, &shape, |got| matmul_by_columns(got, lhs, rhs));
            // The transposed problem cut by rows: `rhs^T @ lhs^T`, the left operand a
            // transposed view (the input gradient's), rows of at most 64 columns among them.
            let mut want_t = vec![0.0f32; n * m];
            matmul(&mut want_t, false, rhs.t(), lhs.t(), Parallelism::None);
            same_bits_in_pools(&want_t, &format!("by rows: {shape}"), |got| {
                matmul_by_rows(got, rhs.t(), lhs.t())
            });
        }
    }

    /// One gemm on gemm's own threads, and the transposed-weight product whichever way this CPU
    /// runs it, equal the single-threaded gemm bit for bit under pools of 1-3 threads, on either
    /// side of [`GEMM_THREADS_COLUMNS`].
    #[test]
    fn gemm_threads_and_the_transposed_weight_product_equal_one_thread_bit_for_bit() {
        for (m, k, n) in [
            (96, 1100, 520),
            (200, 700, 600),
            (64, 300, 256),
            (40, 2100, 512),
        ] {
            // `lhs` a transposed (k x m) weight, as the input gradients' `W^T`.
            let w = super::super::test_values(k * m, 3);
            let b = super::super::test_values(k * n, 4);
            let lhs = MatRef::row_major(&w, k, m).t();
            let rhs = MatRef::row_major(&b, k, n);
            let mut want = vec![0.0f32; m * n];
            matmul(&mut want, false, lhs, rhs, Parallelism::None);
            let shape = format!("{m}x{k}x{n}");
            same_bits_in_pools(&want, &format!("gemm's threads: {shape}"), |got| {
                let threaded = super::super::schedule::gemm_threads();
                matmul(got, false, lhs, rhs, threaded)
            });
            same_bits_in_pools(&want, &format!("transposed weight: {shape}"), |got| {
                matmul_transposed_weight(got, lhs, rhs)
            });
        }
    }

    /// Runs `product` into a buffer of NaN under rayon pools of 1, 2 and 3 threads, and checks
    /// each result against `want` bit for bit.
    fn same_bits_in_pools(want: &[f32], what: &str, product: impl Fn(&mut [f32]) + Sync) {
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut got = vec![f32::NAN; want.len()];
            pool.install(|| product(&mut got));
            let differ = super::super::differing_bits(&got, want);
            assert_eq!(differ, 0, "{what}, {threads} threads");
        }
    }

    #[test]
    #[should_panic(expected = "overruns")]
    fn rejects_views_past_the_slice() {
        let a = [1.0f32; 5];
        let mut c = [0.0f32; 4];
        let lhs = MatRef::row_major(&a, 2, 3);
        matmul(
            &mut c,
            false,
            lhs,
            MatRef::row_major(&a, 3, 2),
            Parallelism::None,
        );
    }
}
