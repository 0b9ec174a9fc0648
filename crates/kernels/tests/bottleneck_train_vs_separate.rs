//! The whole-block `bottleneck_train` against the fused ops it replaces (each tested on its own
//! against the separate convolution and BatchNorm, and those against candle and PyTorch):
//! `conv_bn_train` for the first two stages and the downsample shortcut, then
//! `conv_bn_add_relu_train`; with a squeeze-excite gate, `conv_bn_train` for the third stage,
//! the gate as the backbone composes it (`spatial_mean`, candle matmuls, bias adds, ReLU,
//! candle-nn's `sigmoid`) and `channel_gate_add_relu`. The same output and batch statistics
//! bit for bit, and the same gradients of the input and all nine to sixteen parameters (as
//! numbers: candle adds the separate ops' gradients into zero-filled buffers, which can flip a
//! zero's sign), over an identity and a strided downsample shortcut, dense and grouped 3x3
//! convolutions, and maps and batches that take the GEMM, batched-GEMM, direct and Winograd
//! paths.

use candle_core::{Device, Result, Tensor, Var};
use mtanet_kernels::{
    bottleneck_train, channel_gate_add_relu, conv_bn_add_relu_train, conv_bn_train, spatial_mean,
    BatchStats, ConvBnStage, ConvParams, SqueezeExciteGate,
};

mod support;
use support::{assert_same_gradient_numbers, differing_bits, pseudo_random, values};

/// One block: batch, input channels, width (the 3x3's channels), output channels, map size,
/// the 3x3's stride and groups, and whether the shortcut is a downsample convolution.
type Block = (usize, usize, usize, usize, usize, usize, usize, bool);

const BLOCKS: [Block; 5] = [
    (2, 16, 8, 16, 6, 1, 1, false),
    (2, 8, 8, 16, 9, 2, 4, true),
    (3, 8, 16, 32, 5, 1, 8, true),
    (16, 32, 32, 32, 7, 1, 8, false),
    (16, 16, 32, 64, 14, 2, 1, true),
];

/// A conv weight, BatchNorm weight and BatchNorm bias as trainable variables.
struct StageVars {
    w: Var,
    gamma: Var,
    beta: Var,
    conv: ConvParams,
}

impl StageVars {
    fn new(shape: [usize; 4], conv: ConvParams, seed: u64) -> Result<Self> {
        let c = shape[0];
        Ok(Self {
            w: Var::from_tensor(&pseudo_random(&shape, seed, 0.3, 0.0)?)?,
            gamma: Var::from_tensor(&pseudo_random(&[c], seed + 1, 0.5, 1.0)?)?,
            beta: Var::from_tensor(&pseudo_random(&[c], seed + 2, 0.5, 0.0)?)?,
            conv,
        })
    }

    fn stage(&self) -> ConvBnStage<'_> {
        ConvBnStage {
            conv_weight: &self.w,
            conv: self.conv,
            bn_weight: &self.gamma,
            bn_bias: &self.beta,
            eps: 1e-5,
        }
    }

    fn vars(&self) -> [(&'static str, &Var); 3] {
        [("w", &self.w), ("gamma", &self.gamma), ("beta", &self.beta)]
    }
}

/// A squeeze-excite gate's four parameters as trainable variables, the weights stored as
/// PyTorch's `(out, in, 1, 1)`.
struct GateVars {
    reduce_w: Var,
    reduce_b: Var,
    expand_w: Var,
    expand_b: Var,
}

impl GateVars {
    fn new(channels: usize, reduced: usize, seed: u64) -> Result<Self> {
        let var = |shape: &[usize], seed, scale| {
            Var::from_tensor(&pseudo_random(shape, seed, scale, 0.0)?)
        };
        Ok(Self {
            reduce_w: var(&[reduced, channels, 1, 1], seed, 0.5)?,
            reduce_b: var(&[reduced], seed + 1, 0.2)?,
            expand_w: var(&[channels, reduced, 1, 1], seed + 2, 0.5)?,
            expand_b: var(&[channels], seed + 3, 0.2)?,
        })
    }

    fn gate(&self) -> SqueezeExciteGate<'_> {
        SqueezeExciteGate {
            reduce_weight: &self.reduce_w,
            reduce_bias: &self.reduce_b,
            expand_weight: &self.expand_w,
            expand_bias: &self.expand_b,
        }
    }

    /// The gate as the backbone's `SqueezeExcite::gate` composes it.
    fn composed(&self, z: &Tensor) -> Result<Tensor> {
        let hidden = spatial_mean(z)?
            .matmul(&self.reduce_w.flatten_from(1)?.t()?)?
            .broadcast_add(&self.reduce_b)?
            .relu()?;
        let pre = hidden
            .matmul(&self.expand_w.flatten_from(1)?.t()?)?
            .broadcast_add(&self.expand_b)?;
        candle_nn::ops::sigmoid(&pre)
    }

    fn vars(&self) -> [(&'static str, &Var); 4] {
        [
            ("se reduce w", &self.reduce_w),
            ("se reduce b", &self.reduce_b),
            ("se expand w", &self.expand_w),
            ("se expand b", &self.expand_b),
        ]
    }
}

fn params(stride: usize, padding: usize, groups: usize) -> ConvParams {
    ConvParams {
        stride,
        padding,
        groups,
    }
}

/// The block built from the per-stage fused ops, with the batch statistics in
/// `bottleneck_train`'s order (conv1, conv2, conv3, downsample).
fn separate(
    x: &Tensor,
    stages: &[StageVars; 3],
    downsample: Option<&StageVars>,
    gate: Option<&GateVars>,
) -> Result<(Tensor, Vec<BatchStats>)> {
    let eps = 1e-5;
    let run = |s: &StageVars, input: &Tensor, relu: bool| {
        conv_bn_train(input, &s.w, &s.gamma, &s.beta, s.conv, eps, relu)
    };
    let (h1, s1) = run(&stages[0], x, true)?;
    let (h2, s2) = run(&stages[1], &h1, true)?;
    let (shortcut, sd) = match downsample {
        Some(d) => {
            let (yd, sd) = run(d, x, false)?;
            (yd, Some(sd))
        }
        None => (x.clone(), None),
    };
    let third = &stages[2];
    let (y, s3) = match gate {
        None => conv_bn_add_relu_train(
            &h2,
            &third.w,
            (&third.gamma, &third.beta),
            &shortcut,
            third.conv,
            eps,
        )?,
        Some(gate) => {
            let (z, s3) = run(third, &h2, false)?;
            let y = channel_gate_add_relu(&z, &gate.composed(&z)?, &shortcut)?;
            (y, s3)
        }
    };
    Ok((y, [s1, s2, s3].into_iter().chain(sd).collect()))
}

#[test]
fn the_block_equals_its_fused_stages() -> Result<()> {
    blocks_equal_their_fused_stages(false)
}

#[test]
fn the_block_with_a_squeeze_excite_gate_equals_its_fused_stages() -> Result<()> {
    blocks_equal_their_fused_stages(true)
}

/// Every block of [`BLOCKS`] as one op against its separate ops, with a squeeze-excite gate
/// (reducing the output channels 4-fold) when `with_gate`.
fn blocks_equal_their_fused_stages(with_gate: bool) -> Result<()> {
    for (i, &(n, c_in, width, c_out, size, stride, groups, has_downsample)) in
        BLOCKS.iter().enumerate()
    {
        let seed = 10_000 + 100 * i as u64;
        let x = Var::from_tensor(&pseudo_random(&[n, c_in, size, size], seed, 1.0, 0.2)?)?;
        let stages = [
            StageVars::new([width, c_in, 1, 1], params(1, 0, 1), seed + 10)?,
            StageVars::new(
                [width, width / groups, 3, 3],
                params(stride, 1, groups),
                seed + 20,
            )?,
            StageVars::new([c_out, width, 1, 1], params(1, 0, 1), seed + 30)?,
        ];
        let downsample = has_downsample
            .then(|| StageVars::new([c_out, c_in, 1, 1], params(stride, 0, 1), seed + 40))
            .transpose()?;
        let gate = with_gate
            .then(|| GateVars::new(c_out, c_out / 4, seed + 50))
            .transpose()?;
        let (fused, fused_stats) = bottleneck_train(
            &x,
            [stages[0].stage(), stages[1].stage(), stages[2].stage()],
            downsample.as_ref().map(StageVars::stage),
            gate.as_ref().map(GateVars::gate),
        )?;
        let (reference, reference_stats) =
            separate(&x, &stages, downsample.as_ref(), gate.as_ref())?;
        let case = format!("block {i}{}", if with_gate { " with gate" } else { "" });
        assert_eq!(fused.dims(), reference.dims(), "{case}: output shape");
        let differ = differing_bits(&values(&fused)?, &values(&reference)?);
        assert_eq!(differ, 0, "{case}: {differ} output values differ");
        assert_eq!(fused_stats.len(), 3 + has_downsample as usize, "{case}");
        assert_eq!(fused_stats, reference_stats, "{case}: batch statistics");

        let r = pseudo_random(fused.dims(), seed + 5, 1.0, 0.0)?;
        let gf = (&fused * &r)?.sum_all()?.backward()?;
        let gs = (&reference * &r)?.sum_all()?.backward()?;
        let mut vars = vec![("x".to_string(), &x)];
        for (s, stage) in stages.iter().chain(&downsample).enumerate() {
            for (name, v) in stage.vars() {
                vars.push((format!("stage {s} {name}"), v));
            }
        }
        for (name, v) in gate.iter().flat_map(GateVars::vars) {
            vars.push((name.to_string(), v));
        }
        assert_same_gradient_numbers(&case, (&gf, &gs), vars)?;
    }
    Ok(())
}

#[test]
fn an_input_without_gradient_gets_none() -> Result<()> {
    let x = pseudo_random(&[2, 8, 6, 6], 7, 1.0, 0.0)?;
    let stages = [
        StageVars::new([4, 8, 1, 1], params(1, 0, 1), 1)?,
        StageVars::new([4, 4, 3, 3], params(1, 1, 1), 2)?,
        StageVars::new([8, 4, 1, 1], params(1, 0, 1), 3)?,
    ];
    let (y, _) = bottleneck_train(
        &x,
        [stages[0].stage(), stages[1].stage(), stages[2].stage()],
        None,
        None,
    )?;
    let grads = y.sum_all()?.backward()?;
    assert!(grads.get(&x).is_none(), "the input is a constant");
    assert!(stages
        .iter()
        .all(|s| s.vars().iter().all(|(_, v)| grads.get(v).is_some())));
    Ok(())
}

#[test]
fn mismatched_shapes_and_devices_are_errors() -> Result<()> {
    let x = pseudo_random(&[2, 8, 6, 6], 7, 1.0, 0.0)?;
    let stages = [
        StageVars::new([4, 8, 1, 1], params(1, 0, 1), 1)?,
        StageVars::new([4, 4, 3, 3], params(1, 1, 1), 2)?,
        // 16 output channels against an 8-channel identity shortcut.
        StageVars::new([16, 4, 1, 1], params(1, 0, 1), 3)?,
    ];
    let main = [stages[0].stage(), stages[1].stage(), stages[2].stage()];
    let err = bottleneck_train(&x, main, None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shortcut"), "{err}");

    let short_bias = Tensor::ones(3, candle_core::DType::F32, &Device::Cpu)?;
    let mut main = [stages[0].stage(), stages[1].stage(), stages[2].stage()];
    main[0].bn_bias = &short_bias;
    let err = bottleneck_train(&x, main, None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("conv1's BatchNorm"), "{err}");

    // A gate whose expand weight has the reduced width on the wrong axis.
    let identity = [
        StageVars::new([4, 8, 1, 1], params(1, 0, 1), 1)?,
        StageVars::new([4, 4, 3, 3], params(1, 1, 1), 2)?,
        StageVars::new([8, 4, 1, 1], params(1, 0, 1), 3)?,
    ];
    let gate = GateVars::new(8, 2, 4)?;
    let transposed = gate.expand_w.reshape((2, 8, 1, 1))?;
    let mut bad_gate = gate.gate();
    bad_gate.expand_weight = &transposed;
    let main = [
        identity[0].stage(),
        identity[1].stage(),
        identity[2].stage(),
    ];
    let err = bottleneck_train(&x, main, None, Some(bad_gate))
        .unwrap_err()
        .to_string();
    assert!(err.contains("squeeze-excite gate over 8 channels"), "{err}");
    let main = [
        identity[0].stage(),
        identity[1].stage(),
        identity[2].stage(),
    ];
    assert!(bottleneck_train(&x, main, None, Some(gate.gate())).is_ok());

    let x64 = x.to_dtype(candle_core::DType::F64)?;
    let main = [stages[0].stage(), stages[1].stage(), stages[2].stage()];
    let err = bottleneck_train(&x64, main, None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("f32"), "{err}");
    Ok(())
}
