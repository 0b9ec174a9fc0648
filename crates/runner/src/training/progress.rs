//! Progress of a training stage: a bar on a terminal, a line every 30 s without one (CI,
//! nohup, pipes), nothing when quiet.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// The progress display of one stage.
pub struct StageProgress {
    bar: ProgressBar,
    plain: bool,
    quiet: bool,
    last_line: Instant,
    start: Instant,
    start_step: usize,
    total: usize,
}

impl StageProgress {
    /// A display for `total` steps starting at `position`, prefixed by `prefix`.
    pub fn new(prefix: String, total: usize, position: usize, quiet: bool) -> Self {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(total as u64)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(prefix);
        bar.set_position(position as u64);
        Self {
            bar,
            plain: !quiet && !std::io::stderr().is_terminal(),
            quiet,
            last_line: Instant::now(),
            start: Instant::now(),
            start_step: position,
            total,
        }
    }

    /// Shows the step count and the step's loss and speed.
    pub fn step(&mut self, step: usize, loss: f32, img_s: f64) {
        self.bar.set_position(step as u64);
        self.bar
            .set_message(format!("loss {loss:.4} {img_s:.1} img/s"));
        if self.plain && self.last_line.elapsed().as_secs() >= 30 {
            self.last_line = Instant::now();
            let done = (step - self.start_step).max(1) as f64;
            let per_step = self.start.elapsed().as_secs_f64() / done;
            eprintln!(
                "{} step {step}/{} loss {loss:.4} {img_s:.1} img/s eta {:.0} s",
                self.bar.prefix(),
                self.total,
                per_step * (self.total - step) as f64
            );
        }
    }

    /// Prints a line above the bar (or plainly without a terminal).
    pub fn println(&self, line: String) {
        if self.plain {
            eprintln!("{line}");
        } else if !self.quiet {
            self.bar.println(line);
        }
    }

    /// Leaves the bar where it is (the run stops).
    pub fn abandon(&self) {
        self.bar.abandon();
    }

    /// Removes the bar (the stage is done).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
