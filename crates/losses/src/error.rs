//! Typed errors of the loss functions, wrapped into `candle_core::Error` at the API boundary.

/// What can be wrong with the tensors handed to a loss.
#[derive(Debug, thiserror::Error)]
pub enum LossError {
    /// A tensor does not have the shape the loss needs.
    #[error("{loss}: `{field}` has shape {got:?}, expected {expected}")]
    Shape {
        /// The loss that rejected the input.
        loss: &'static str,
        /// The argument name.
        field: &'static str,
        /// The shape that was passed.
        got: Vec<usize>,
        /// The shape that was expected, in words.
        expected: String,
    },
    /// A class index of a valid frame is outside `0..classes`.
    #[error("{loss}: `{field}` row {row} holds class {value}, but there are {classes} classes")]
    ClassOutOfRange {
        /// The loss that rejected the input.
        loss: &'static str,
        /// The argument name.
        field: &'static str,
        /// The batch row.
        row: usize,
        /// The class index found.
        value: i64,
        /// Number of classes (logit columns).
        classes: usize,
    },
    /// A tensor has a dtype the loss cannot interpret.
    #[error("{loss}: `{field}` has dtype {dtype:?}, expected {expected}")]
    DType {
        /// The loss that rejected the input.
        loss: &'static str,
        /// The argument name.
        field: &'static str,
        /// The dtype that was passed.
        dtype: candle_core::DType,
        /// The dtypes accepted, in words.
        expected: &'static str,
    },
    /// `LossKind::Uncertainty` was asked for without the learnable weights.
    #[error("total_loss: LossKind::Uncertainty needs the UncertaintyWeights (got None)")]
    MissingUncertaintyWeights,
}

impl From<LossError> for candle_core::Error {
    fn from(e: LossError) -> Self {
        candle_core::Error::wrap(e)
    }
}
