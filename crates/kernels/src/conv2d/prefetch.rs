//! Software prefetch of short runs the hardware prefetcher does not see coming: a unit's
//! input planes of a few cache lines each, and the rows a small-map gather reads one image
//! apart. A hint only: no value depends on it.

/// Asks the CPU to bring `data` into its L2 cache ahead of use (one prefetch per 64-byte
/// line; nothing on CPUs other than x86-64).
pub(super) fn prefetch_l2(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for i in (0..data.len()).step_by(16) {
        // SAFETY: `i` is inside `data`; a prefetch reads nothing architecturally.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                data.as_ptr().add(i).cast(),
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}
