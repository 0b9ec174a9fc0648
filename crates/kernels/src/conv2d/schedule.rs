//! How a pass spreads its units over rayon threads without oversubscribing gemm.

use gemm::Parallelism;
use rayon::prelude::*;
use std::marker::PhantomData;

/// An output buffer shared by parallel tasks that each write their own disjoint part of it
/// (output channels of every image, columns of every row), where no split of the slice into
/// `&mut` pieces expresses the parts. It holds the buffer's `&mut` borrow while it is in use,
/// so nothing else reads or writes the buffer while the tasks run.
pub(super) struct SharedOutput<'a> {
    start: *mut f32,
    len: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: the tasks a `SharedOutput` is given write disjoint values (each user's SAFETY
// comment says why), and the `&mut` borrow it holds keeps every other access out until its
// last use, after they have all ended.
unsafe impl Sync for SharedOutput<'_> {}

impl<'a> SharedOutput<'a> {
    /// Shares `out` for the lifetime of the borrow.
    pub(super) fn new(out: &'a mut [f32]) -> Self {
        Self {
            start: out.as_mut_ptr(),
            len: out.len(),
            _borrow: PhantomData,
        }
    }

    /// The buffer's first value.
    pub(super) fn start(&self) -> *mut f32 {
        self.start
    }

    /// The buffer's length in values.
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

/// gemm parallelism for a product run outside any parallel loop.
pub fn gemm_threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// True when `units` independent pieces keep every rayon thread busy with little imbalance.
pub fn parallel_units_pay(units: usize) -> bool {
    let threads = rayon::current_num_threads();
    threads > 1 && (units.is_multiple_of(threads) || units >= 4 * threads)
}

/// Calls `f(unit, chunk, parallelism)` for each `chunk_len` piece of `buf`: in parallel with
/// single-threaded gemm when there are enough pieces, else in order with multi-threaded gemm.
pub fn for_each_unit<F>(buf: &mut [f32], chunk_len: usize, f: F)
where
    F: Fn(usize, &mut [f32], Parallelism) + Sync,
{
    let units = buf.len() / chunk_len.max(1);
    if parallel_units_pay(units) {
        buf.par_chunks_mut(chunk_len)
            .enumerate()
            .for_each(|(u, chunk)| f(u, chunk, Parallelism::None));
    } else {
        let par = gemm_threads();
        for (u, chunk) in buf.chunks_mut(chunk_len).enumerate() {
            f(u, chunk, par);
        }
    }
}
