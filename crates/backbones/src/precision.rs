//! Mixed precision in the style of PyTorch's autocast: parameters, BatchNorm statistics,
//! gradients and optimizer state stay in the parameters' dtype (f32), and only the heavy
//! arithmetic runs in a lower-precision compute dtype.
//!
//! With [`Precision::Bf16`], [`crate::MtaNet`] casts its input to bf16 and the backbone's
//! layers follow the dtype of what they receive: each convolution casts its f32 weight to
//! bf16 at use (candle's `to_dtype` backward hands the gradient back in f32, so the master
//! weight is updated in f32); BatchNorm normalises in f32 (statistics, running averages and
//! affine in f32) and returns the input's dtype; SE/CBAM pool and run their small MLPs in
//! f32 and cast the gate back; the stem max-pool compares in f32 (exact: a max is one of its
//! inputs). The backbone's feature map is cast to f32 before the shared encoder, so pooling,
//! heads and losses are f32.

use candle_core::DType;
use serde::{Deserialize, Serialize};

/// The dtype the backbone computes in (`precision:` in an experiment's YAML).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in the parameters' dtype (f32): results equal PyTorch's f32 to ~1e-5.
    #[default]
    F32,
    /// The backbone's convolutions in bf16 with f32 master weights, BatchNorm and losses.
    Bf16,
}

impl Precision {
    /// The compute dtype, or `None` for "the parameters' dtype".
    pub fn compute_dtype(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(DType::BF16),
        }
    }

    /// The YAML spelling: `f32` or `bf16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!(
                "unknown precision `{other}` (expected f32 or bf16)"
            )),
        }
    }
}
