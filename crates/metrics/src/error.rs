//! Typed errors for values pushed into the accumulators.

/// Why a pushed frame was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// A slice has the wrong number of entries.
    #[error("{field}: {got} values, expected {expected}")]
    Length {
        /// The argument name.
        field: &'static str,
        /// Entries expected.
        expected: usize,
        /// Entries passed.
        got: usize,
    },
    /// A binary label is neither 0 nor 1.
    #[error("{field}[{index}] = {value}, expected 0 or 1")]
    NotBinary {
        /// The argument name.
        field: &'static str,
        /// Position in the slice.
        index: usize,
        /// The value found.
        value: u8,
    },
    /// A float AU label of a labelled frame is neither 0.0 nor 1.0.
    #[error("au label of frame {frame}, AU {index} = {value}, expected 0 or 1")]
    NotBinaryLabel {
        /// Frame within the batch.
        frame: usize,
        /// AU position.
        index: usize,
        /// The value found.
        value: f32,
    },
    /// A class index is outside `0..classes`.
    #[error("{field} = {value}, but there are {classes} classes")]
    ClassOutOfRange {
        /// The argument name.
        field: &'static str,
        /// The class index found.
        value: usize,
        /// Number of classes.
        classes: usize,
    },
    /// A threshold list does not match the number of AUs.
    #[error("{got} AU thresholds for {expected} AUs")]
    Thresholds {
        /// Number of AUs.
        expected: usize,
        /// Thresholds passed.
        got: usize,
    },
}
