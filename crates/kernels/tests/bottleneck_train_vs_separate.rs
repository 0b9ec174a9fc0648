//! The whole-block `bottleneck_train` against the fused ops it replaces (each tested on its own
//! against the separate convolution and BatchNorm, and those against candle and PyTorch):
//! `conv_bn_train` for the first two stages and the downsample shortcut, then
//! `conv_bn_add_relu_train`; with a squeeze-excite gate, `conv_bn_train` for the third stage,
//! the gate as the backbone composes it (`spatial_mean`, candle matmuls, bias adds, ReLU,
//! candle-nn's `sigmoid`) and `channel_gate_add_relu`; with a CBAM gate, the channel gate as the
//! backbone composes it (`spatial_mean_max`, the shared MLP over the stacked rows, the halves
//! summed, `sigmoid`, `channel_gate`), then `channel_max_mean`, `conv2d`, `batch_norm_train`,
//! `sigmoid` and `spatial_gate_add_relu`. The same output and batch statistics bit for bit, and
//! the same gradients of the input and all nine to nineteen parameters (as
//! numbers: candle adds the separate ops' gradients into zero-filled buffers, which can flip a
//! zero's sign), over an identity and a strided downsample shortcut, dense and grouped 3x3
//! convolutions, and maps and batches that take the GEMM, batched-GEMM, direct and Winograd
//! paths.

use candle_core::{Device, Result, Tensor, Var};
use mtanet_kernels::{
    batch_norm_train, bottleneck_train, bottlenecks_train, channel_gate, channel_gate_add_relu,
    channel_max_mean, conv2d, conv_bn_add_relu_train, conv_bn_train, spatial_gate_add_relu,
    spatial_mean, spatial_mean_max, BatchStats, BlockGate, BottleneckStages, ConvBnStage,
    ConvParams, GateMlp, ParamGrads,
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

/// A gate MLP's four parameters as trainable variables, the weights stored as PyTorch's
/// `(out, in, 1, 1)` for a squeeze-excite gate and `(out, in)` for CBAM's `Linear` layers.
struct GateVars {
    reduce_w: Var,
    reduce_b: Var,
    expand_w: Var,
    expand_b: Var,
}

impl GateVars {
    fn new(channels: usize, reduced: usize, seed: u64) -> Result<Self> {
        Self::shaped(channels, reduced, seed, &[1, 1])
    }

    /// With weights `(out, in)`, as CBAM's `Linear` layers hold them.
    fn linear(channels: usize, reduced: usize, seed: u64) -> Result<Self> {
        Self::shaped(channels, reduced, seed, &[])
    }

    fn shaped(channels: usize, reduced: usize, seed: u64, tail: &[usize]) -> Result<Self> {
        let var = |shape: &[usize], seed, scale| {
            Var::from_tensor(&pseudo_random(shape, seed, scale, 0.0)?)
        };
        let weight = |rows: usize, cols: usize| [&[rows, cols][..], tail].concat();
        Ok(Self {
            reduce_w: var(&weight(reduced, channels), seed, 0.5)?,
            reduce_b: var(&[reduced], seed + 1, 0.2)?,
            expand_w: var(&weight(channels, reduced), seed + 2, 0.5)?,
            expand_b: var(&[channels], seed + 3, 0.2)?,
        })
    }

    fn mlp(&self) -> GateMlp<'_> {
        GateMlp {
            reduce_weight: &self.reduce_w,
            reduce_bias: &self.reduce_b,
            expand_weight: &self.expand_w,
            expand_bias: &self.expand_b,
        }
    }

    fn gate(&self) -> BlockGate<'_> {
        BlockGate::SqueezeExcite(self.mlp())
    }

    /// `fc2(relu(fc1(v)))` for each row of `v`, as candle-nn's `Linear` computes it.
    fn composed_mlp(&self, v: &Tensor) -> Result<Tensor> {
        let hidden = v
            .matmul(&self.reduce_w.flatten_from(1)?.t()?)?
            .broadcast_add(&self.reduce_b)?
            .relu()?;
        hidden
            .matmul(&self.expand_w.flatten_from(1)?.t()?)?
            .broadcast_add(&self.expand_b)
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
            ("mlp reduce w", &self.reduce_w),
            ("mlp reduce b", &self.reduce_b),
            ("mlp expand w", &self.expand_w),
            ("mlp expand b", &self.expand_b),
        ]
    }
}

/// A CBAM gate's parameters: the shared channel MLP, and the spatial gate's 7x7 convolution
/// (2 channels to 1) with its BatchNorm.
struct CbamVars {
    mlp: GateVars,
    spatial: StageVars,
}

impl CbamVars {
    fn new(channels: usize, reduced: usize, seed: u64) -> Result<Self> {
        Ok(Self {
            mlp: GateVars::linear(channels, reduced, seed)?,
            spatial: StageVars::new([1, 2, 7, 7], params(1, 3, 1), seed + 10)?,
        })
    }

    fn gate(&self) -> BlockGate<'_> {
        BlockGate::Cbam {
            channel: self.mlp.mlp(),
            spatial: self.spatial.stage(),
        }
    }

    /// `relu(u * spatial(u) + shortcut)` with `u = z * channel(z)`, as the backbone's
    /// `Cbam::gated_t` and bottleneck compose it, and the spatial BatchNorm's statistics.
    fn composed(&self, z: &Tensor, shortcut: &Tensor) -> Result<(Tensor, BatchStats)> {
        let pooled = spatial_mean_max(z)?;
        let (_, n, c) = pooled.dims3()?;
        let att = self
            .mlp
            .composed_mlp(&pooled.reshape((2 * n, c))?)?
            .reshape((2, n, c))?
            .sum(0)?;
        let u = channel_gate(z, &candle_nn::ops::sigmoid(&att)?)?;
        let s = &self.spatial;
        let conv = conv2d(&channel_max_mean(&u)?, &s.w, 1, 3, 1)?;
        let (logits, stats) = batch_norm_train(&conv, &s.gamma, &s.beta, 1e-5, false)?;
        let gate = candle_nn::ops::sigmoid(&logits)?;
        Ok((spatial_gate_add_relu(&u, &gate, shortcut)?, stats))
    }

    fn vars(&self) -> Vec<(&'static str, &Var)> {
        let spatial = self.spatial.vars();
        let names = ["spatial w", "spatial gamma", "spatial beta"];
        let spatial = names.into_iter().zip(spatial.map(|(_, v)| v));
        self.mlp.vars().into_iter().chain(spatial).collect()
    }
}

/// A block's attention gate in the tests.
enum TestGate {
    SqueezeExcite(GateVars),
    Cbam(CbamVars),
}

impl TestGate {
    fn gate(&self) -> BlockGate<'_> {
        match self {
            Self::SqueezeExcite(se) => se.gate(),
            Self::Cbam(cbam) => cbam.gate(),
        }
    }

    fn vars(&self) -> Vec<(&'static str, &Var)> {
        match self {
            Self::SqueezeExcite(se) => se.vars().to_vec(),
            Self::Cbam(cbam) => cbam.vars(),
        }
    }
}

/// The three main stages of a block, as `bottleneck_train` takes them.
fn main_stages(stages: &[StageVars; 3]) -> [ConvBnStage<'_>; 3] {
    [stages[0].stage(), stages[1].stage(), stages[2].stage()]
}

fn params(stride: usize, padding: usize, groups: usize) -> ConvParams {
    ConvParams {
        stride,
        padding,
        groups,
    }
}

/// The block built from the per-stage fused ops, with the batch statistics in
/// `bottleneck_train`'s order (conv1, conv2, conv3, downsample, CBAM's spatial gate).
fn separate(
    x: &Tensor,
    stages: &[StageVars; 3],
    downsample: Option<&StageVars>,
    gate: Option<&TestGate>,
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
    let (y, s3, spatial) = match gate {
        None => {
            let (y, s3) = conv_bn_add_relu_train(
                &h2,
                &third.w,
                (&third.gamma, &third.beta),
                &shortcut,
                third.conv,
                eps,
            )?;
            (y, s3, None)
        }
        Some(TestGate::SqueezeExcite(se)) => {
            let (z, s3) = run(third, &h2, false)?;
            let y = channel_gate_add_relu(&z, &se.composed(&z)?, &shortcut)?;
            (y, s3, None)
        }
        Some(TestGate::Cbam(cbam)) => {
            let (z, s3) = run(third, &h2, false)?;
            let (y, spatial) = cbam.composed(&z, &shortcut)?;
            (y, s3, Some(spatial))
        }
    };
    Ok((
        y,
        [s1, s2, s3].into_iter().chain(sd).chain(spatial).collect(),
    ))
}

/// Which gate the blocks of a test carry.
#[derive(Clone, Copy, Debug, PartialEq)]
enum GateKind {
    None,
    SqueezeExcite,
    Cbam,
}

#[test]
fn the_block_equals_its_fused_stages() -> Result<()> {
    blocks_equal_their_fused_stages(GateKind::None)
}

#[test]
fn the_block_with_a_squeeze_excite_gate_equals_its_fused_stages() -> Result<()> {
    blocks_equal_their_fused_stages(GateKind::SqueezeExcite)
}

#[test]
fn the_block_with_a_cbam_gate_equals_its_fused_stages() -> Result<()> {
    blocks_equal_their_fused_stages(GateKind::Cbam)
}

/// Every block of [`BLOCKS`] as one op against its separate ops, with a gate of `kind` (its MLP
/// reducing the output channels 4-fold).
fn blocks_equal_their_fused_stages(kind: GateKind) -> Result<()> {
    for (i, &(n, c_in, width, c_out, size, stride, groups, has_downsample)) in
        BLOCKS.iter().enumerate()
    {
        let seed = 10_000 + 100 * i as u64;
        let x = Var::from_tensor(&pseudo_random(&[n, c_in, size, size], seed, 1.0, 0.2)?)?;
        let shape = (c_in, width, c_out, stride, groups);
        let TestBlock {
            stages,
            downsample,
            gate,
        } = TestBlock::build(shape, has_downsample, kind, seed + 10)?;
        let param_grads = ParamGrads::new();
        let (fused, fused_stats) = bottleneck_train(
            &x,
            main_stages(&stages),
            downsample.as_ref().map(StageVars::stage),
            gate.as_ref().map(TestGate::gate),
            &param_grads,
        )?;
        let (reference, reference_stats) =
            separate(&x, &stages, downsample.as_ref(), gate.as_ref())?;
        let case = format!("block {i} with gate {kind:?}");
        assert_eq!(fused.dims(), reference.dims(), "{case}: output shape");
        let differ = differing_bits(&values(&fused)?, &values(&reference)?);
        assert_eq!(differ, 0, "{case}: {differ} output values differ");
        let stat_count = 3 + has_downsample as usize + (kind == GateKind::Cbam) as usize;
        assert_eq!(fused_stats.len(), stat_count, "{case}");
        assert_eq!(fused_stats, reference_stats, "{case}: batch statistics");

        let r = pseudo_random(fused.dims(), seed + 5, 1.0, 0.0)?;
        let gf = param_grads.backward(&(&fused * &r)?.sum_all()?)?;
        let gs = (&reference * &r)?.sum_all()?.backward()?;
        let mut vars = vec![("x".to_string(), &x)];
        for (s, stage) in stages.iter().chain(&downsample).enumerate() {
            for (name, v) in stage.vars() {
                vars.push((format!("stage {s} {name}"), v));
            }
        }
        for (name, v) in gate.iter().flat_map(TestGate::vars) {
            vars.push((name.to_string(), v));
        }
        assert_same_gradient_numbers(&case, (&gf, &gs), vars)?;
    }
    Ok(())
}

/// The variables of one block: its stages (the downsample's last) and its gate.
struct TestBlock {
    stages: [StageVars; 3],
    downsample: Option<StageVars>,
    gate: Option<TestGate>,
}

impl TestBlock {
    /// Block `c_in -> c_out` (width `c_out / 2`, grouped 3x3 with 4 groups), striding `stride`,
    /// with a downsample shortcut where the shapes change.
    fn new(c_in: usize, c_out: usize, stride: usize, gate: GateKind, seed: u64) -> Result<Self> {
        let downsample = stride != 1 || c_in != c_out;
        Self::build((c_in, c_out / 2, c_out, stride, 4), downsample, gate, seed)
    }

    /// Block `(c_in, width, c_out, stride, groups)`: the three stages from `seed`, `seed + 10`
    /// and `seed + 20`, the downsample from `seed + 30`, the gate (reducing `c_out` 4-fold)
    /// from `seed + 40`.
    fn build(
        (c_in, width, c_out, stride, groups): (usize, usize, usize, usize, usize),
        has_downsample: bool,
        gate: GateKind,
        seed: u64,
    ) -> Result<Self> {
        let stages = [
            StageVars::new([width, c_in, 1, 1], params(1, 0, 1), seed)?,
            StageVars::new(
                [width, width / groups, 3, 3],
                params(stride, 1, groups),
                seed + 10,
            )?,
            StageVars::new([c_out, width, 1, 1], params(1, 0, 1), seed + 20)?,
        ];
        let downsample = has_downsample
            .then(|| StageVars::new([c_out, c_in, 1, 1], params(stride, 0, 1), seed + 30))
            .transpose()?;
        let gate = match gate {
            GateKind::None => None,
            GateKind::SqueezeExcite => Some(TestGate::SqueezeExcite(GateVars::new(
                c_out,
                c_out / 4,
                seed + 40,
            )?)),
            GateKind::Cbam => Some(TestGate::Cbam(CbamVars::new(c_out, c_out / 4, seed + 40)?)),
        };
        Ok(Self {
            stages,
            downsample,
            gate,
        })
    }

    fn spec(&self) -> BottleneckStages<'_> {
        BottleneckStages {
            main: main_stages(&self.stages),
            downsample: self.downsample.as_ref().map(StageVars::stage),
            gate: self.gate.as_ref().map(TestGate::gate),
        }
    }

    fn vars(&self, block: usize) -> Vec<(String, &Var)> {
        let stages = self.stages.iter().chain(&self.downsample).enumerate();
        let mut all: Vec<(String, &Var)> = stages
            .flat_map(|(s, st)| {
                st.vars()
                    .map(|(name, v)| (format!("block {block} stage {s} {name}"), v))
            })
            .collect();
        for (name, v) in self.gate.iter().flat_map(TestGate::vars) {
            all.push((format!("block {block} {name}"), v));
        }
        all
    }
}

/// Blocks chained in one op equal the same blocks as single-block ops one after the other: the
/// output and every block's statistics bit for bit, every gradient (input and parameters) the
/// same numbers.
#[test]
fn a_chain_of_blocks_equals_its_blocks_one_by_one() -> Result<()> {
    let x = Var::from_tensor(&pseudo_random(&[3, 8, 10, 10], 77, 1.0, 0.2)?)?;
    let blocks = [
        TestBlock::new(8, 16, 2, GateKind::None, 100)?,
        TestBlock::new(16, 16, 1, GateKind::SqueezeExcite, 200)?,
        TestBlock::new(16, 32, 1, GateKind::Cbam, 300)?,
        TestBlock::new(32, 32, 1, GateKind::None, 400)?,
    ];
    let specs: Vec<BottleneckStages> = blocks.iter().map(TestBlock::spec).collect();
    let chained_grads = ParamGrads::new();
    let (chained, chained_stats) = bottlenecks_train(&x, &specs, &chained_grads)?;

    let one_grads = ParamGrads::new();
    let mut y = x.as_tensor().clone();
    let mut one_stats = Vec::new();
    for spec in &specs {
        let (next, stats) =
            bottleneck_train(&y, spec.main, spec.downsample, spec.gate, &one_grads)?;
        y = next;
        one_stats.push(stats);
    }
    assert_eq!(chained.dims(), y.dims());
    let differ = differing_bits(&values(&chained)?, &values(&y)?);
    assert_eq!(differ, 0, "{differ} output values differ");
    assert_eq!(chained_stats, one_stats, "batch statistics");

    let r = pseudo_random(y.dims(), 78, 1.0, 0.0)?;
    let gc = chained_grads.backward(&(&chained * &r)?.sum_all()?)?;
    let go = one_grads.backward(&(&y * &r)?.sum_all()?)?;
    let mut vars = vec![("x".to_string(), &x)];
    for (b, block) in blocks.iter().enumerate() {
        vars.extend(block.vars(b));
    }
    assert!(vars.len() > 40, "{} variables", vars.len());
    assert_same_gradient_numbers("chain", (&gc, &go), vars)
}

#[test]
fn an_input_without_gradient_gets_none() -> Result<()> {
    let x = pseudo_random(&[2, 8, 6, 6], 7, 1.0, 0.0)?;
    let stages = [
        StageVars::new([4, 8, 1, 1], params(1, 0, 1), 1)?,
        StageVars::new([4, 4, 3, 3], params(1, 1, 1), 2)?,
        StageVars::new([8, 4, 1, 1], params(1, 0, 1), 3)?,
    ];
    let param_grads = ParamGrads::new();
    let (y, _) = bottleneck_train(&x, main_stages(&stages), None, None, &param_grads)?;
    let grads = param_grads.backward(&y.sum_all()?)?;
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
    let main = main_stages(&stages);
    let err = bottleneck_train(&x, main, None, None, &ParamGrads::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("shortcut"), "{err}");

    let short_bias = Tensor::ones(3, candle_core::DType::F32, &Device::Cpu)?;
    let mut main = main_stages(&stages);
    main[0].bn_bias = &short_bias;
    let err = bottleneck_train(&x, main, None, None, &ParamGrads::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("conv1's BatchNorm"), "{err}");

    let identity = [
        StageVars::new([4, 8, 1, 1], params(1, 0, 1), 1)?,
        StageVars::new([4, 4, 3, 3], params(1, 1, 1), 2)?,
        StageVars::new([8, 4, 1, 1], params(1, 0, 1), 3)?,
    ];
    // A weight computed from a variable: its gradient would stop at the product.
    let scaled = (identity[1].stage().conv_weight * 2.0)?;
    let mut main = main_stages(&identity);
    main[1].conv_weight = &scaled;
    let err = bottleneck_train(&x, main, None, None, &ParamGrads::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("computed from other tensors"), "{err}");

    // A gate whose expand weight has the reduced width on the wrong axis.
    let gate = GateVars::new(8, 2, 4)?;
    let transposed = gate.expand_w.reshape((2, 8, 1, 1))?;
    let mut bad_mlp = gate.mlp();
    bad_mlp.expand_weight = &transposed;
    let bad_gate = BlockGate::SqueezeExcite(bad_mlp);
    let main = main_stages(&identity);
    let err = bottleneck_train(&x, main, None, Some(bad_gate), &ParamGrads::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("gate MLP over 8 channels"), "{err}");
    let main = main_stages(&identity);
    assert!(bottleneck_train(&x, main, None, Some(gate.gate()), &ParamGrads::new()).is_ok());

    // A CBAM spatial convolution whose padding shrinks the map.
    let cbam = CbamVars::new(8, 2, 5)?;
    let mut bad_spatial = cbam.spatial.stage();
    bad_spatial.conv.padding = 1;
    let bad_gate = BlockGate::Cbam {
        channel: cbam.mlp.mlp(),
        spatial: bad_spatial,
    };
    let main = main_stages(&identity);
    let err = bottleneck_train(&x, main, None, Some(bad_gate), &ParamGrads::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("CBAM spatial gate"), "{err}");
    let main = main_stages(&identity);
    let (_, stats) = bottleneck_train(&x, main, None, Some(cbam.gate()), &ParamGrads::new())?;
    assert_eq!(stats.len(), 4, "three stages and the spatial gate");

    let x64 = x.to_dtype(candle_core::DType::F64)?;
    let main = main_stages(&stages);
    let err = bottleneck_train(&x64, main, None, None, &ParamGrads::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("f32"), "{err}");
    Ok(())
}
