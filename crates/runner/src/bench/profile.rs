//! The step and eval breakdowns `bench-one` prints on stderr with `MTANET_BENCH_PHASES=1`
//! (and, with `MTANET_KERNEL_PROFILE=1`, by kernel: `mtanet_kernels::profile`).

/// The mean train step split into its phases and, with the kernel profile, the fused
/// convolution + BatchNorm kernels by pass and shape, in ms per step and as a share of the
/// step; what is left of each phase is everything else (attention, pooling, residual joins,
/// head, losses, candle's graph and gradient accumulation).
pub(super) fn print_step_profile(steps: usize, phase_sums: [f64; 3]) {
    let [fwd, bwd, opt] = phase_sums.map(|s| s / steps as f64 * 1e3);
    let total = fwd + bwd + opt;
    eprintln!(
        "mean of {steps} timed train steps: {total:.1} ms = forward+loss {fwd:.1} + backward \
         {bwd:.1} + optimizer {opt:.1}"
    );
    let Some((in_fwd, in_bwd)) = print_kernels(steps, total) else {
        return;
    };
    row("other forward+loss", None, fwd - in_fwd, total);
    row("other backward", None, bwd - in_bwd, total);
    row("optimizer", None, opt, total);
}

/// The mean eval forward and, with the kernel profile, its convolutions (each with its
/// BatchNorm, and the residual join where fused) by shape, in ms per forward.
pub(super) fn print_eval_profile(calls: usize, seconds: f64) {
    let total = seconds / calls as f64 * 1e3;
    eprintln!("mean of {calls} eval forwards: {total:.1} ms");
    if let Some((in_fwd, in_bwd)) = print_kernels(calls, total) {
        row("other", None, total - in_fwd - in_bwd, total);
    }
}

/// Takes the kernel profile and prints it per call (`calls` steps or forwards of `total` ms
/// each); returns the ms per call in forward kernels (`fwd`, `eval`, `eval+add`) and in the
/// others (the backward passes), or `None` when the profile is empty.
fn print_kernels(calls: usize, total: f64) -> Option<(f64, f64)> {
    let kernels = mtanet_kernels::profile::take();
    if kernels.is_empty() {
        return None;
    }
    eprintln!(
        "{:<28} {:>9} {:>10} {:>7}",
        "kernel", "calls", "ms/step", "share"
    );
    let (mut in_fwd, mut in_bwd) = (0.0, 0.0);
    for k in &kernels {
        let ms = k.seconds / calls as f64 * 1e3;
        let forward = ["fwd", "eval", "eval+add"]
            .iter()
            .any(|pass| k.label.ends_with(pass));
        if forward {
            in_fwd += ms;
        } else {
            in_bwd += ms;
        }
        row(&k.label, Some(k.calls as f64 / calls as f64), ms, total);
    }
    Some((in_fwd, in_bwd))
}

/// One line: label, calls per step (blank for a remainder), ms per step and share of `total`.
fn row(label: &str, calls: Option<f64>, ms: f64, total: f64) {
    let calls = calls.map(|c| format!("{c:.1}")).unwrap_or_default();
    eprintln!(
        "{label:<28} {calls:>9} {ms:>10.1} {:>6.1}%",
        100.0 * ms / total
    );
}
