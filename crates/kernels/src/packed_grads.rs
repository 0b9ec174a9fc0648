//! Backward ops that return several gradients at once: a candle op has one output, so they
//! write the input gradient and the small parameter gradients one after the other into one
//! flat buffer, and the backward pass cuts it back into tensors (views, no copy).

use candle_core::{Result, Shape, Tensor};

/// Cuts a flat `packed` buffer into tensors of `shapes`, in order.
pub(crate) fn unpack<const K: usize>(packed: &Tensor, shapes: [&Shape; K]) -> Result<[Tensor; K]> {
    let mut start = 0;
    let parts = shapes
        .iter()
        .map(|shape| {
            let len = shape.elem_count();
            let t = packed.narrow(0, start, len)?.reshape(*shape)?;
            start += len;
            Ok(t)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(parts
        .try_into()
        .unwrap_or_else(|_| unreachable!("K shapes give K tensors")))
}
