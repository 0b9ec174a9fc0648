//! Checks and reads shared by the fused convolution ops (`conv_bn.rs`, `conv_affine.rs`).

use crate::conv2d::storage::dense_f32;
use crate::conv2d::ConvGeometry;
use crate::ConvParams;
use candle_core::{bail, DType, Layout, Result, Shape, Storage, Tensor};
use std::borrow::Cow;

/// True when every tensor is f32 on the CPU, where the fused convolution ops run.
pub(crate) fn cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The geometry of `conv` over `x` and `w`, once the operands are checked: all f32 on the CPU,
/// the two per-channel tensors `channel` (named `names` in errors) one value per output channel,
/// and `shortcut`, when given, the output's shape. `op` names the op in errors.
pub(crate) fn fused_conv_geometry(
    op: &str,
    (x, w): (&Tensor, &Tensor),
    (channel, names): ([&Tensor; 2], &str),
    shortcut: Option<&Tensor>,
    conv: ConvParams,
) -> Result<ConvGeometry> {
    let mut all = vec![x, w, channel[0], channel[1]];
    all.extend(shortcut);
    if !cpu_f32(&all) {
        bail!("{op}: f32 tensors on the CPU only")
    }
    let geometry = ConvGeometry::new(x.dims(), w.dims(), conv.stride, conv.padding, conv.groups)?;
    let c = geometry.out_channels;
    if channel.iter().any(|t| t.dims() != [c]) {
        bail!(
            "{op}: {names} must hold {c} values, got {:?} and {:?}",
            channel[0].dims(),
            channel[1].dims()
        )
    }
    if let Some(shortcut) = shortcut {
        let out = Shape::from(geometry.output_dims());
        if shortcut.dims() != out.dims() {
            bail!(
                "{op}: shortcut {:?} for output {:?}",
                shortcut.dims(),
                out.dims()
            )
        }
    }
    Ok(geometry)
}

/// The dense f32 values of a CPU tensor's storage; `op` and `what` name the op and the operand
/// in errors.
pub(crate) fn cpu_values<'a>(
    op: &str,
    storage: &'a Storage,
    layout: &Layout,
    what: &str,
) -> Result<Cow<'a, [f32]>> {
    match storage {
        Storage::Cpu(s) => dense_f32(s, layout, what),
        _ => bail!("{op}: {what} is not on the CPU"),
    }
}
