//! A bounds-checked front to `gemm::gemm` for f32 matrices given as strided slices.

use gemm::Parallelism;

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
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "matmul: inner dimensions {k} and {}", rhs.rows);
    assert!(
        m > 0 && n > 0 && k > 0,
        "matmul: empty product {m}x{k} @ {k}x{n}"
    );
    assert_eq!(dst.len(), m * n, "matmul: destination length for {m}x{n}");
    let (dst_rs, dst_cs) = if dst_column_major { (1, m) } else { (n, 1) };
    lhs.check("lhs");
    rhs.check("rhs");
    // SAFETY: every index gemm touches is `r * row_stride + c * col_stride` with `r < rows`,
    // `c < cols` of a view checked above to lie inside its slice; `dst` is a dense m x n
    // block of exactly `m * n` values (row- or column-major), borrowed mutably and not aliased by the
    // shared `lhs`/`rhs` borrows.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
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
