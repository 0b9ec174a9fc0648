//! Test inputs shared by the kernel suites.

use candle_core::{Device, Result, Tensor};

/// Deterministic values in [-1, 1) * scale + offset from a 64-bit LCG.
pub fn pseudo_random(shape: &[usize], seed: u64, scale: f32, offset: f32) -> Result<Tensor> {
    let count: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let values: Vec<f32> = (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale + offset
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}
