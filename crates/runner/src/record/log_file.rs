//! `tracing` output: warnings to stderr, and everything at INFO to the current run's `log.txt`.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

static RUN_LOG: Mutex<Option<File>> = Mutex::new(None);

/// Directs the file layer to `path` (appending), or closes it with `None`.
pub fn set_run_log(path: Option<&Path>) {
    let file = path.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    if let Ok(mut g) = RUN_LOG.lock() {
        *g = file;
    }
}

struct RunLogWriter;

impl Write for RunLogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut g) = RUN_LOG.lock() {
            if let Some(f) = g.as_mut() {
                // A failing log write (disk full) must not stop training.
                let _ = f.write_all(buf);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the global subscriber (idempotent). `RUST_LOG` overrides the stderr level.
pub fn init() {
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")));
    let file = fmt::layer()
        .with_ansi(false)
        .with_target(false)
        .with_writer(|| RunLogWriter)
        .with_filter(EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
}
