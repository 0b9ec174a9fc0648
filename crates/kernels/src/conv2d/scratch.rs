//! Per-thread column buffers reused across calls, so that im2col does not page-fault a fresh
//! allocation for every (image, group) unit.

use std::cell::RefCell;

thread_local! {
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch slice of `len` values (contents unspecified: `f` must overwrite it).
///
/// Uses this thread's reusable buffer; if that buffer is already lent out further up the stack
/// (a rayon worker that stole another unit while waiting inside gemm), a fresh one is used.
pub fn with_columns<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    COLUMNS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_use_gets_a_distinct_buffer() {
        with_columns(8, |outer| {
            outer.fill(1.0);
            with_columns(8, |inner| inner.fill(2.0));
            assert!(outer.iter().all(|v| *v == 1.0));
        });
        with_columns(3, |b| assert_eq!(b.len(), 3));
    }
}
