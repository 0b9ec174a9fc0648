//! Opt-in timing of the training kernels by pass and shape, to say where a step's time goes.
//!
//! Off unless the environment sets `MTANET_KERNEL_PROFILE=1` (read once); then every fused
//! convolution + BatchNorm op (training passes, and `eval` for the eval-mode ones), the f32
//! max-pool (`max-pool fwd`, `max-pool bwd`) and the blocks' gates and joins (`se gate fwd`,
//! `cbam gate bwd`, .., and `se gate eval` in the inference op) add their wall time, per label
//! such as `conv 3x3 s1 g32 dx`, to a process-wide table that [`take`] returns and empties.
//! Each timed call runs on all rayon threads while the caller waits, so the times add up to
//! wall time of the step.

use crate::conv2d::ConvGeometry;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Total wall time and call count of one label.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// What ran, e.g. `conv 1x1 s1 g1 @7 fwd` or `bn @7 bwd` (output map size, then the pass).
    pub label: String,
    /// Calls since the table was last taken.
    pub calls: u64,
    /// Their summed wall time in seconds.
    pub seconds: f64,
}

fn table() -> &'static Mutex<HashMap<String, (u64, f64)>> {
    static TABLE: OnceLock<Mutex<HashMap<String, (u64, f64)>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// True when `MTANET_KERNEL_PROFILE=1` was set when first asked.
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("MTANET_KERNEL_PROFILE").is_ok_and(|v| v == "1"))
}

/// Runs `f`, adding its wall time to `label()`'s entry when profiling is enabled.
pub(crate) fn timed<R>(label: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let start = Instant::now();
    let out = f();
    let seconds = start.elapsed().as_secs_f64();
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    let entry = t.entry(label()).or_insert((0, 0.0));
    entry.0 += 1;
    entry.1 += seconds;
    out
}

/// The table since the last call (largest total first), emptied.
pub fn take() -> Vec<KernelTime> {
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<KernelTime> = t
        .drain()
        .map(|(label, (calls, seconds))| KernelTime {
            label,
            calls,
            seconds,
        })
        .collect();
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    rows
}

/// The label of one pass of `g`: kernel, stride, groups, output size and the pass, e.g.
/// `conv 3x3 s1 g32 @14 dx`.
pub(crate) fn conv_label(g: &ConvGeometry, pass: &str) -> String {
    format!(
        "conv {}x{} s{} g{} @{} {pass}",
        g.kernel_h, g.kernel_w, g.stride, g.groups, g.out_h
    )
}
