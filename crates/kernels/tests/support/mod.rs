//! Test inputs shared by the kernel suites.

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};

/// Deterministic values in [-1, 1) * scale + offset from a 64-bit LCG.
#[allow(dead_code)]
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

/// Deterministic values in [-1, 1) from the same 64-bit LCG seeded the way the convolution
/// suites (`conv2d_vs_candle.rs`, `conv2d_winograd.rs`) always have, so their inputs stay as
/// they were.
#[allow(dead_code)]
pub fn pseudo_random_unit(shape: &[usize], seed: u64) -> Result<Tensor> {
    let count: usize = shape.iter().product();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// A tensor's f32 values in row-major order.
#[allow(dead_code)]
pub fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// How many positions of two equally long slices hold different bits.
#[allow(dead_code)]
pub fn differing_bits(a: &[f32], b: &[f32]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .filter(|(p, q)| p.to_bits() != q.to_bits())
        .count()
}

/// Asserts that two tensors have the same shape and the same values bit for bit; `what` names
/// them in the failure.
#[allow(dead_code)]
pub fn assert_same_bits(what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let (a, b) = (values(a)?, values(b)?);
    let differ = differing_bits(&a, &b);
    assert_eq!(differ, 0, "{what}: {differ} of {} values differ", a.len());
    Ok(())
}

/// Asserts that two gradients hold the same numbers, not all zero: equal as f32 values, so a
/// zero's sign may differ (candle adds a graph node's gradients into a zero-filled buffer, which
/// turns -0 into +0). `what` names the gradient in the failure.
#[allow(dead_code)]
pub fn assert_same_numbers(what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let (a, b) = (values(a)?, values(b)?);
    let differ = a.iter().zip(&b).filter(|(p, q)| p != q).count();
    assert_eq!(differ, 0, "{what}: {differ} of {} differ", a.len());
    assert!(a.iter().any(|v| *v != 0.0), "{what}: all zero");
    Ok(())
}

/// [`assert_same_numbers`] for the gradient of each named variable in two gradient stores
/// (`case` and the name label a failure); a variable without a gradient in either fails.
#[allow(dead_code)]
pub fn assert_same_gradient_numbers<'a>(
    case: &str,
    (a, b): (&GradStore, &GradStore),
    vars: impl IntoIterator<Item = (impl AsRef<str>, &'a Var)>,
) -> Result<()> {
    for (name, v) in vars {
        let name = name.as_ref();
        let (Some(ga), Some(gb)) = (a.get(v), b.get(v)) else {
            panic!("{case}: no gradient for {name}")
        };
        assert_same_numbers(&format!("{case} d{name}"), ga, gb)?;
    }
    Ok(())
}

/// A convolution case: (batch, c_in, c_out, size, kernel, stride, padding, groups).
#[allow(dead_code)]
pub type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

/// The shapes the fused convolution ops are checked on against the separate ops: dense,
/// strided, grouped (4 and 8 groups), pointwise (stride 1 and 2), a 7x7 stem, a small map (the
/// whole-batch GEMM path), batch 1, two pointwise layers that the 1x1 register blocks take
/// on AMD Zen 5 and Zen 4 (`pointwise_nchw.rs`: 7x7 maps over 3 images, whose vectors cross
/// from one image into the next, and a 14x14 map with 256 input channels), and a 4x4 one whose
/// forward they take on Zen 4 with their loops turned (5 images: tiles of 3 and 2 vectors).
#[allow(dead_code)]
pub const FUSED_CONV_CASES: [Case; 12] = [
    (2, 8, 16, 9, 3, 1, 1, 1),
    (3, 8, 8, 10, 3, 2, 1, 1),
    (2, 16, 16, 7, 3, 1, 1, 4),
    (2, 32, 32, 12, 3, 1, 1, 8),
    (2, 12, 20, 6, 1, 1, 0, 1),
    (2, 8, 12, 9, 1, 2, 0, 1),
    (2, 3, 8, 15, 7, 2, 3, 1),
    (4, 16, 24, 4, 3, 1, 1, 1),
    (1, 6, 10, 5, 3, 1, 1, 1),
    (3, 16, 24, 7, 1, 1, 0, 1),
    (2, 256, 16, 14, 1, 1, 0, 1),
    (5, 24, 16, 4, 1, 1, 0, 1),
];

/// max |a - b| / max |b| over two equally long slices.
#[allow(dead_code)]
pub fn relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len());
    let diff = actual
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let scale = expected.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    diff / scale.max(1e-12)
}

/// Output, input gradient and weight gradient of the padding-1 convolution `g` (3x3, any
/// stride and groups) on pseudo-random input, weight and output gradient from `seed`, each pass
/// run with `algorithm` forced.
#[allow(dead_code)]
pub fn conv_passes(
    algorithm: mtanet_kernels::conv2d::Algorithm,
    g: &mtanet_kernels::ConvGeometry,
    seed: u64,
) -> Result<[Vec<f32>; 3]> {
    use mtanet_kernels::{Conv2d, Conv2dInputGrad, Conv2dWeightGrad};
    let x = pseudo_random(&[g.batch, g.in_channels, g.in_h, g.in_w], seed, 1.0, 0.0)?;
    let wt = pseudo_random(
        &[g.out_channels, g.group_in_channels(), 3, 3],
        seed + 1,
        1.0,
        0.0,
    )?;
    let dy = pseudo_random(
        &[g.batch, g.out_channels, g.out_h, g.out_w],
        seed + 2,
        1.0,
        0.0,
    )?;
    let op = Conv2d {
        stride: g.stride,
        padding: 1,
        groups: g.groups,
    };
    mtanet_kernels::conv2d::with_algorithm(algorithm, || {
        let y = x.apply_op2_no_bwd(&wt, &op)?;
        let dx = dy.apply_op2_no_bwd(&wt, &Conv2dInputGrad { geometry: *g })?;
        let dw = x.apply_op2_no_bwd(&dy, &Conv2dWeightGrad { geometry: *g })?;
        Ok([
            y.flatten_all()?.to_vec1()?,
            dx.flatten_all()?.to_vec1()?,
            dw.flatten_all()?.to_vec1()?,
        ])
    })
}

/// The names of a convolution's three passes, in the order `run` returns them below.
#[allow(dead_code)]
pub const PASSES: [&str; 3] = ["output", "input grad", "weight grad"];

/// Runs `run(shape, seed)` (a convolution's output, input gradient and weight gradient) for
/// every shape inside rayon pools of 1, 2 and 3 threads, and panics naming the shape and pass
/// unless all three give the same bits.
#[allow(dead_code)]
pub fn same_bits_on_1_2_3_threads<S: std::fmt::Debug + Sync>(
    what: &str,
    shapes: &[S],
    run: impl Fn(&S, u64) -> Result<[Vec<f32>; 3]> + Sync,
) -> Result<()> {
    let mut runs = Vec::new();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(candle_core::Error::wrap)?;
        runs.push(pool.install(|| -> Result<Vec<[Vec<u32>; 3]>> {
            shapes
                .iter()
                .enumerate()
                .map(|(i, shape)| {
                    let out = run(shape, 7 + i as u64)?;
                    Ok(out.map(|v| v.iter().map(|f| f.to_bits()).collect()))
                })
                .collect()
        })?);
    }
    for run in &runs[1..] {
        for ((shape, a), b) in shapes.iter().zip(&runs[0]).zip(run) {
            for (pass, (x, y)) in PASSES.iter().zip(a.iter().zip(b)) {
                assert!(
                    x == y,
                    "{what} {shape:?}: {pass} depends on the thread count"
                );
            }
        }
    }
    Ok(())
}
