//! How a pass spreads its units over rayon threads without oversubscribing gemm.

use gemm::Parallelism;
use rayon::prelude::*;

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
