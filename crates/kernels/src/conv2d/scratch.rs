//! Per-thread buffers reused across calls, so that im2col and the batched GEMMs do not
//! page-fault (or zero) a fresh allocation for every call.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

thread_local! {
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Buffers a thread keeps for reuse (a training step's convolution outputs come back at once);
/// a returned buffer beyond this replaces the smallest.
const POOL_BUFFERS: usize = 64;
/// Values a thread's pool holds at most (1 GiB of f32); a buffer that would exceed it is freed.
const POOL_VALUES: usize = 1 << 28;
/// A pooled buffer is lent for a request of at least `1 / POOL_FIT` of its size: a small
/// buffer kept as long as a large one (a CBAM spatial gate's one-channel map, saved for the
/// backward pass) would otherwise hold a whole-layer allocation idle until the step ends.
const POOL_FIT: usize = 2;

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

/// Zeroes `v` on all threads: a reused buffer that a pass adds into.
pub(crate) fn fill_zero(v: &mut [f32]) {
    use rayon::prelude::*;
    v.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
}

/// A fresh vector of `len` zeros, written on all threads.
///
/// `vec![0.0; len]` asks `calloc`, which clears reused heap memory on the calling thread alone:
/// for a layer's output that is a whole pass over megabytes on one core of many.
pub fn zeroed(len: usize) -> Vec<f32> {
    use rayon::prelude::*;
    use std::mem::MaybeUninit;
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(1 << 16)
        .for_each(|c| c.fill(MaybeUninit::new(0.0)));
    // SAFETY: the first `len` values of the capacity were written just above.
    unsafe { v.set_len(len) };
    v
}

/// A buffer from this thread's pool, returned to the pool of the thread that drops it.
pub struct Scratch {
    /// Every value initialised; `len` of them are lent out.
    buf: Vec<f32>,
    len: usize,
}

impl Scratch {
    /// `len` values whose contents are unspecified (stale values of an earlier use, or zeros):
    /// the caller overwrites every value it reads. The smallest pooled buffer that holds them
    /// and is at most [`POOL_FIT`] times their size, or a fresh one.
    pub fn take(len: usize) -> Self {
        let reused = POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            let fit = (0..pool.len())
                .filter(|&i| (len..=POOL_FIT * len.max(1)).contains(&pool[i].len()))
                .min_by_key(|&i| pool[i].len());
            fit.map(|i| pool.swap_remove(i))
        });
        // A reused buffer keeps its values; growing a pooled one instead would copy it.
        #[allow(unused_mut)]
        let mut buf = reused.unwrap_or_else(|| vec![0.0; len]);
        // Debug builds (the tests) lend NaN, so that a value read before it is written shows.
        #[cfg(debug_assertions)]
        buf[..len].fill(f32::NAN);
        Self { buf, len }
    }
}

impl Scratch {
    /// `values` as a lent buffer, which joins this thread's pool when dropped.
    pub fn from_vec(values: Vec<f32>) -> Self {
        Self {
            len: values.len(),
            buf: values,
        }
    }

    /// The lent values as a vector of their own, leaving the pool (no copy).
    pub fn into_vec(mut self) -> Vec<f32> {
        let mut values = std::mem::take(&mut self.buf);
        values.truncate(self.len);
        values
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scratch({} values)", self.len)
    }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            return;
        }
        // A thread being torn down has no pool left: the buffer is simply freed.
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            let held: usize = pool.iter().map(Vec::len).sum();
            if held + buf.len() > POOL_VALUES {
                return;
            }
            if pool.len() < POOL_BUFFERS {
                pool.push(buf);
            } else if let Some(smallest) = (0..pool.len()).min_by_key(|&i| pool[i].len()) {
                if pool[smallest].len() < buf.len() {
                    pool[smallest] = buf;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_is_all_zero_bits_even_over_reused_memory() {
        for len in [0, 1, 1 << 16, (1 << 16) + 1, 300_001] {
            // Leave freed memory full of non-zero values for the allocator to hand back.
            drop(vec![f32::NAN; len]);
            let v = zeroed(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|x| x.to_bits() == 0), "len {len}");
        }
    }

    #[test]
    fn nested_use_gets_a_distinct_buffer() {
        with_columns(8, |outer| {
            outer.fill(1.0);
            with_columns(8, |inner| inner.fill(2.0));
            assert!(outer.iter().all(|v| *v == 1.0));
        });
        with_columns(3, |b| assert_eq!(b.len(), 3));
    }

    #[test]
    fn pooled_buffers_are_reused_and_distinct_while_held() {
        let mut a = Scratch::take(1000);
        a.fill(1.0);
        let ptr = a.as_ptr();
        drop(a);
        // The same allocation comes back, at the requested length.
        let b = Scratch::take(600);
        assert_eq!((b.as_ptr(), b.len()), (ptr, 600));
        // Held at once: two different buffers.
        let c = Scratch::take(600);
        assert_ne!(b.as_ptr(), c.as_ptr());
        assert_eq!(c.len(), 600);
    }

    #[test]
    fn a_small_request_does_not_take_a_much_larger_buffer() {
        let big = Scratch::take(10_000);
        let ptr = big.as_ptr();
        drop(big);
        let small = Scratch::take(10_000 / POOL_FIT - 1);
        assert_ne!(
            small.as_ptr(),
            ptr,
            "a buffer over POOL_FIT times the request"
        );
        // The large buffer is still pooled for a request it fits.
        let again = Scratch::take(10_000 / POOL_FIT);
        assert_eq!(again.as_ptr(), ptr);
    }
}
