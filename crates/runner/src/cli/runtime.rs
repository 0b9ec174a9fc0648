//! Process-wide runtime defaults set before any candle op runs.

/// Sets sane runtime defaults for CPU training before any candle op runs (each can be
/// overridden by setting the variable yourself):
/// - `RAYON_NUM_THREADS` = available cores: candle otherwise parses /proc/cpuinfo on every matmul;
/// - `CANDLE_NUM_THREADS=1`: candle's elementwise `BarrierPool` spin-waits against the rayon
///   threads that run our convolutions; measured on 2 cores, a demo training step took
///   2.0 s with the pool and 0.8 s without it (README, "Runtime defaults").
pub fn runtime_defaults() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    keep_freed_memory();
}

/// glibc returns every freed block above 128 KiB to the kernel (`munmap`), so each op's
/// fresh multi-megabyte output is page-faulted and zeroed again, every step (~10% of a CPU
/// training step in `perf`). Raising the mmap threshold to its 32 MiB maximum and the trim
/// threshold to 1 GiB lets freed activations be reused; same effect as
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...`, which takes precedence when set.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // SAFETY: mallopt only changes allocator thresholds; called before any worker thread.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as i32);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as i32);
        }
    }
}

/// The mmap threshold [`runtime_defaults`] sets (bytes, glibc's maximum).
const MMAP_THRESHOLD: usize = 32 << 20;
/// The trim threshold [`runtime_defaults`] sets (bytes).
const TRIM_THRESHOLD: usize = 1 << 30;

/// The malloc thresholds this process runs with, as a `GLIBC_TUNABLES` value, for a child
/// that should run under the same ones (`mtanet bench`'s PyTorch process): the variable as
/// set, else the thresholds [`runtime_defaults`] sets.
pub fn malloc_tunables() -> String {
    std::env::var("GLIBC_TUNABLES").unwrap_or_else(|_| {
        format!(
            "glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"
        )
    })
}
