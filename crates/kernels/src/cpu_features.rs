//! What this CPU can run, detected once per process, for the kernels that dispatch at run time
//! (the committed build targets AVX2; wider instructions are taken only where they exist).

/// AVX-512F on this CPU (checked once).
pub(crate) fn avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX512F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX512F.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AVX2 and FMA (the committed build's baseline, `.cargo/config.toml`) without AVX-512F: the
/// CPUs the eight-lane kernels were measured on (an AMD EPYC Zen 3), where the sixteen-lane
/// ones cannot run.
pub(crate) fn avx2_only() -> bool {
    cfg!(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )) && !avx512f()
}
