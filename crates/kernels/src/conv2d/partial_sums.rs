//! The weight gradients' partial sums over the batch: a fixed cut into chunks of consecutive
//! images, each chunk summed on its own, the chunks then added in order, so that the result is
//! the same for any number of threads (docs/determinism.md).

use rayon::prelude::*;
use std::ops::Range;

/// Partial sums the batch is cut into (fewer when the batch is smaller): a constant, so that
/// the order of floating-point additions, and therefore the result, does not depend on the
/// number of threads (docs/determinism.md).
const PARTIALS: usize = 4;

/// The images of partial sum `chunk` of [`partials`]`(batch)`: consecutive, the same for any
/// thread count.
pub(super) fn image_chunk(batch: usize, chunk: usize) -> Range<usize> {
    let per_chunk = batch.div_ceil(partials(batch));
    (chunk * per_chunk).min(batch)..((chunk + 1) * per_chunk).min(batch)
}

/// How many partial sums a weight gradient over `batch` images is cut into.
pub(super) fn partials(batch: usize) -> usize {
    PARTIALS.min(batch).max(1)
}

/// Adds the `parts.len() / len` partial sums in `parts` (each `len` values) in order into the
/// first, and returns it.
pub(super) fn sum_partials(mut parts: Vec<f32>, len: usize) -> Vec<f32> {
    let (first, rest) = parts.split_at_mut(len);
    for part in rest.chunks(len) {
        first
            .par_chunks_mut(1 << 14)
            .zip(part.par_chunks(1 << 14))
            .for_each(|(d, p)| {
                for (d, v) in d.iter_mut().zip(p) {
                    *d += *v;
                }
            });
    }
    parts.truncate(len);
    parts
}
