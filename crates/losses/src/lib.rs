//! Masked multi-task losses for MTANet (paper Eq. 1-5) on candle tensors.
//!
//! Every loss takes model outputs, labels and a per-frame 0/1 mask (Aff-Wild2 frames carry
//! labels for only some tasks). Only the valid rows are gathered (`index_select`), so masked
//! rows receive an exactly-zero gradient whatever their label markers hold (-1, -5, NaN).
//! A task without enough valid frames contributes an exact, graph-connected zero.
//!
//! Reductions (PyTorch's defaults unless the paper's equation says otherwise):
//! - Eq. 1, cross-entropy: mean over the valid frames ([`masked_cross_entropy`]).
//! - Eq. 2, binary cross-entropy: [`AuReduction::Sum`] (the default, as Eq. 2 writes it)
//!   sums over the AUs and averages over the valid frames; [`AuReduction::Mean`] averages
//!   over valid frames x AUs like PyTorch's default ([`masked_bce_with_logits`]).
//! - Eq. 3-4, CCC loss: population statistics over the valid frames ([`masked_ccc_loss`]).
//! - Eq. 5, Kendall uncertainty weighting or a plain sum ([`total_loss`]).

#![warn(missing_docs)]

mod bce;
mod ccc;
mod ce;
mod error;
mod mask;
mod targets;
mod total;
mod uncertainty;

pub use bce::{masked_bce_with_logits, AuReduction};
pub use ccc::{masked_ccc, masked_ccc_loss, CCC_EPS};
pub use ce::masked_cross_entropy;
pub use error::LossError;
pub use mask::valid_rows;
pub use targets::Targets;
pub use total::{
    combine_losses, total_loss, LossKind, LossReport, LossTerms, TaskLossOptions, TaskLosses,
};
pub use uncertainty::{UncertaintyWeights, UNCERTAINTY_PREFIX};
