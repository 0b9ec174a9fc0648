//! What a forward pass runs on each unit's output as soon as it is written (a BatchNorm's
//! statistics or affine, a ReLU, a residual join), while the values are still in cache.

/// An in-place pass over one unit's output (`C_out/groups` channels of `OH*OW`), given the
/// unit index (image `unit / groups`, group `unit % groups`).
pub type Epilogue<'a> = &'a (dyn Fn(usize, &mut [f32]) + Sync);
