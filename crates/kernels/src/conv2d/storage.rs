//! Reads a CPU storage plus layout as one dense row-major f32 slice.

use candle_core::{bail, CpuStorage, Layout, Result};
use std::borrow::Cow;

/// One operand of a convolution pass: its storage and layout, the dims the pass expects and
/// its name in errors.
pub type Operand<'a, 'b> = (&'a CpuStorage, &'b Layout, &'b [usize], &'b str);

/// The two operands of the convolution pass `pass`, each checked against the dims it expects
/// (the error names the pass, both operands and both shapes) and read by [`dense_f32`].
pub fn pass_operands<'a>(pass: &str, [a, b]: [Operand<'a, '_>; 2]) -> Result<[Cow<'a, [f32]>; 2]> {
    if a.1.dims() != a.2 || b.1.dims() != b.2 {
        bail!(
            "{pass}: expected {} {:?} and {} {:?}, got {:?} and {:?}",
            a.3,
            a.2,
            b.3,
            b.2,
            a.1.dims(),
            b.1.dims()
        )
    }
    Ok([dense_f32(a.0, a.1, a.3)?, dense_f32(b.0, b.1, b.3)?])
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_operands_reads_both_or_names_the_shapes_that_differ() {
        let (a, b) = (
            CpuStorage::F32(vec![1.0, 2.0, 3.0, 4.0]),
            CpuStorage::F32(vec![5.0; 6]),
        );
        let (la, lb) = (Layout::contiguous((2, 2)), Layout::contiguous((2, 3)));
        let [x, y] = pass_operands(
            "pass",
            [(&a, &la, &[2, 2], "left"), (&b, &lb, &[2, 3], "right")],
        )
        .unwrap();
        assert_eq!((&*x, &*y), (&[1.0, 2.0, 3.0, 4.0][..], &[5.0; 6][..]));
        // A transposed view is read in its own order.
        let t = la.transpose(0, 1).unwrap();
        let [x, _] = pass_operands(
            "pass",
            [(&a, &t, &[2, 2], "left"), (&b, &lb, &[2, 3], "right")],
        )
        .unwrap();
        assert_eq!(&*x, &[1.0, 3.0, 2.0, 4.0][..]);
        let e = pass_operands(
            "pass",
            [(&a, &la, &[2, 2], "left"), (&b, &lb, &[3, 2], "right")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("pass: expected left [2, 2] and right [3, 2], got [2, 2] and [2, 3]"),
            "{e}"
        );
    }
}
