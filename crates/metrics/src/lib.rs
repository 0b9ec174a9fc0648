//! ABAW evaluation metrics without tensors: plain slices in, numbers out.
//!
//! Streaming accumulators collect a whole evaluation set (never batch means) and produce a
//! serialisable [`Report`]: CCC per VA dimension, per-AU F1 / total accuracy (with optional
//! per-AU thresholds), expression macro F1 / accuracy / confusion, and the ABAW composites
//! selected by [`Scoring`].
//!
//! Degenerate cases follow scikit-learn: an F1 whose denominator `2tp+fp+fn` is 0 is 0
//! (`zero_division=0`); macro F1 averages over all classes of the vocabulary
//! (`labels=range(C)`); a CCC whose denominator is 0 is 0; an empty accumulator gives `None`.

#![warn(missing_docs)]

mod accumulator;
mod au;
mod batch;
mod ccc;
mod error;
mod expr;
mod f1;
mod report;
mod scoring;
mod thresholds;
mod va;

pub use accumulator::Accumulator;
pub use au::{AuAccumulator, AuScores, DEFAULT_THRESHOLD};
pub use batch::{argmax, FrameBatch};
pub use ccc::{ccc, CccMoments};
pub use error::MetricsError;
pub use expr::ExprAccumulator;
pub use f1::{f1_binary, f1_from_counts, BinaryCounts};
pub use report::{AuReport, ExprReport, Report, TunedAu, VaReport};
pub use scoring::Scoring;
pub use thresholds::{threshold_grid, tune_au_thresholds};
pub use va::VaAccumulator;
