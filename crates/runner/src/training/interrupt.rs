//! Ctrl-C: the first press makes the loop checkpoint and stop after the current step, the
//! second exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the Ctrl-C handler; the loop checkpoints and stops at the next step.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Installs the Ctrl-C handler: the first press checkpoints and stops, the second exits.
pub fn install_ctrlc() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("second Ctrl-C: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: writing a checkpoint after this step (Ctrl-C again to abort)");
    });
}
