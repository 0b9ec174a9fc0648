//! Reads a CPU storage plus layout as one dense row-major f32 slice.

use candle_core::{bail, CpuStorage, Layout, Result};
use std::borrow::Cow;

/// The tensor's values in row-major order: borrowed when the layout is contiguous, gathered
/// through the strides otherwise. `what` names the operand in errors.
pub fn dense_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<Cow<'a, [f32]>> {
    let CpuStorage::F32(data) = storage else {
        bail!("conv2d: {what} must be f32")
    };
    if let Some((start, end)) = layout.contiguous_offsets() {
        return match data.get(start..end) {
            Some(values) => Ok(Cow::Borrowed(values)),
            None => bail!(
                "conv2d: {what} layout {start}..{end} exceeds storage of {}",
                data.len()
            ),
        };
    }
    let dims = layout.dims();
    let strides = layout.stride();
    let count: usize = dims.iter().product();
    let mut out = Vec::with_capacity(count);
    if count == 0 {
        return Ok(Cow::Owned(out));
    }
    let rank = dims.len();
    let (inner_len, inner_stride) = (dims[rank - 1], strides[rank - 1]);
    let mut index = vec![0usize; rank - 1];
    let mut offset = layout.start_offset();
    loop {
        let row = (0..inner_len).map(|i| data.get(offset + i * inner_stride).copied());
        for v in row {
            match v {
                Some(v) => out.push(v),
                None => bail!(
                    "conv2d: {what} strided layout reads past storage of {}",
                    data.len()
                ),
            }
        }
        // Advance the outer multi-index like an odometer.
        let mut axis = rank - 1;
        loop {
            if axis == 0 {
                return Ok(Cow::Owned(out));
            }
            axis -= 1;
            index[axis] += 1;
            offset += strides[axis];
            if index[axis] < dims[axis] {
                break;
            }
            offset -= strides[axis] * dims[axis];
            index[axis] = 0;
        }
    }
}
