//! Inference through a chain of ResNet bottlenecks (every backbone here: without attention, with
//! squeeze-and-excitation, with CBAM): every block's convolutions with their eval-mode
//! BatchNorms and ReLUs, the downsample shortcut, the gate and the residual join, block after
//! block, over buffers reused from one block to the next.
//!
//! As separate candle ops (`conv_affine_eval`, `conv_affine_add_relu_eval`) each layer's output
//! is a fresh tensor that must be cleared before the convolution overwrites it, and, because
//! the parameters are variables, every one of them stays alive in candle's graph until the
//! forward ends. Here each stage writes into a buffer from the scratch pool (stale values of an
//! earlier use: every convolution path overwrites its whole output) that goes back to the pool
//! once the next stage has read it; only the last block's output leaves, as a tensor of its own
//! with no graph. The arithmetic is `conv_affine.rs`'s and the gates' ops' (squeeze-excite's
//! pooling, MLP and join over buffers with the arithmetic of its candle ops; CBAM's
//! `cbam_eval.rs` values), so the values are bit-identical to the chain of separate eval ops;
//! the tests check that.
//!
//! There is no gradient: the output is a constant. Use it where nothing is differentiated
//! (evaluation, prediction); a model in eval mode that is differentiated runs the separate ops.

use crate::cbam_eval::{cbam_join_values, plan_cbam, CbamPlan};
use crate::conv2d::{ConvGeometry, Scratch};
use crate::conv_affine::{forward_values_into, RowPool};
use crate::eval_packs::EvalPacks;
use crate::fused_operands::{cpu_f32, cpu_values};
use crate::gate::channel_gate_add_relu_in_place;
use crate::gate_mlp::{mlp_forward, sigmoid_in_place, MlpParams};
use crate::profile::timed;
use crate::{CbamEval, ConvParams, GateMlp};
use candle_core::{bail, Result, Shape, Tensor};

/// One convolution and its eval-mode BatchNorm as the per-channel affine
/// `z * scale[c] + shift[c]` (`scale = weight / sqrt(running_var + eps)`,
/// `shift = bias - running_mean * scale`).
#[derive(Clone, Copy, Debug)]
pub struct ConvAffineStage<'a> {
    /// The convolution weight, (C_out, C_in / groups, kh, kw), no bias.
    pub conv_weight: &'a Tensor,
    /// The convolution's stride, padding and groups.
    pub conv: ConvParams,
    /// The folded BatchNorm's scale (C_out values).
    pub scale: &'a Tensor,
    /// The folded BatchNorm's shift (C_out values).
    pub shift: &'a Tensor,
}

/// A block's attention gate in eval mode, as [`bottlenecks_infer`] takes it.
#[derive(Clone, Copy)]
pub enum EvalGate<'a> {
    /// Squeeze-and-excitation: the block is `relu(z * gate(mean_hw(z)) + shortcut)` with
    /// `gate = sigmoid(fc2(relu(fc1(m))))`, this MLP's values as candle's `matmul`, bias
    /// addition, `relu` and candle-nn's `sigmoid` compute them.
    SqueezeExcite(GateMlp<'a>),
    /// CBAM: the block is `relu(u * spatial(u) + shortcut)`, `u = z * channel(z)`, as
    /// [`cbam_add_relu_eval`](crate::cbam_add_relu_eval) computes it.
    Cbam(CbamEval<'a>),
}

/// One bottleneck in eval mode, as [`bottlenecks_infer`] takes it.
#[derive(Clone, Copy)]
pub struct BottleneckEvalStages<'a> {
    /// conv1, conv2 and conv3 with their folded BatchNorms.
    pub main: [ConvAffineStage<'a>; 3],
    /// The shortcut's convolution and folded BatchNorm (`None`: the identity).
    pub downsample: Option<ConvAffineStage<'a>>,
    /// The attention gate after the third stage, `z = bn3(conv3(h2))`, if the block has one.
    pub gate: Option<EvalGate<'a>>,
}

impl BottleneckEvalStages<'_> {
    /// Every stage: `main`, then `downsample`.
    fn stages(&self) -> impl Iterator<Item = &ConvAffineStage<'_>> {
        self.main.iter().chain(&self.downsample)
    }
}

/// True when [`bottlenecks_infer`] runs `blocks` on `x`: every tensor f32 on the CPU.
pub fn bottlenecks_infer_applies(x: &Tensor, blocks: &[BottleneckEvalStages<'_>]) -> bool {
    let mut all = vec![x];
    for block in blocks {
        for s in block.stages() {
            all.extend([s.conv_weight, s.scale, s.shift]);
        }
        match &block.gate {
            None => {}
            Some(EvalGate::SqueezeExcite(mlp)) => all.extend(mlp.tensors()),
            Some(EvalGate::Cbam(gate)) => all.extend(gate.tensors()),
        }
    }
    cpu_f32(&all)
}

/// The blocks one after the other on `x`, each `relu(bn3(conv3(h2)) + shortcut)` with
/// `h2 = relu(bn2(conv2(h1)))`, `h1 = relu(bn1(conv1(x)))` and `shortcut = bn_d(conv_d(x))` (or
/// `x`), every BatchNorm in eval mode as its folded affine: the values of
/// `conv_affine_eval` twice, `conv_affine_eval` on the shortcut and `conv_affine_add_relu_eval`
/// per block, bit for bit. With a squeeze-excite gate the block is
/// `relu(z * gate(mean_hw(z)) + shortcut)`, `z = bn3(conv3(h2))`: the values of
/// `conv_affine_eval`, `spatial_mean`, the MLP's candle ops and `channel_gate_add_relu`; with a
/// CBAM gate, those of `conv_affine_eval` and `cbam_add_relu_eval`. The result is a new tensor
/// with no gradient (see the module doc).
/// f32 on the CPU only ([`bottlenecks_infer_applies`]).
///
/// With an [`EvalPacks`] (one per evaluation pass, while the weights stay the same), the
/// layouts the convolution kernels derive from each weight are kept there for the pass's next
/// batches: the same values, packed once. An error where a weight changed while kept.
pub fn bottlenecks_infer(
    x: &Tensor,
    blocks: &[BottleneckEvalStages<'_>],
    packs: Option<&EvalPacks>,
) -> Result<Tensor> {
    if blocks.is_empty() {
        bail!("bottlenecks_infer: no blocks")
    }
    if !bottlenecks_infer_applies(x, blocks) {
        bail!("bottlenecks_infer: f32 tensors on the CPU only")
    }
    // Every block's geometries, checked before anything runs.
    let mut input = x.dims().to_vec();
    let mut planned = Vec::with_capacity(blocks.len());
    for (k, block) in blocks.iter().enumerate() {
        let g1 = geometry(&input, &block.main[0], k, "conv1")?;
        let g2 = geometry(&output_dims(&g1), &block.main[1], k, "conv2")?;
        let g3 = geometry(&output_dims(&g2), &block.main[2], k, "conv3")?;
        let main = [g1, g2, g3];
        let downsample = block
            .downsample
            .as_ref()
            .map(|d| geometry(&input, d, k, "downsample"))
            .transpose()?;
        let out = output_dims(&main[2]);
        let shortcut = downsample.as_ref().map_or(input.clone(), output_dims);
        if shortcut != out {
            bail!("bottlenecks_infer: block {k}'s shortcut {shortcut:?} for output {out:?}")
        }
        let gate = match block.gate {
            None => None,
            Some(EvalGate::SqueezeExcite(mlp)) => {
                let c = main[2].out_channels;
                let reduced = mlp.reduced(c).map_err(|e| {
                    candle_core::Error::Msg(format!(
                        "bottlenecks_infer: block {k}'s squeeze-excite gate: {e}"
                    ))
                })?;
                Some(PlannedGate::SqueezeExcite { mlp, reduced })
            }
            Some(EvalGate::Cbam(gate)) => {
                let op = format!("bottlenecks_infer: block {k}'s CBAM gate");
                Some(PlannedGate::Cbam(plan_cbam(
                    &op,
                    main[2].output_dims(),
                    &gate,
                )?))
            }
        };
        planned.push((main, downsample, gate));
        input = out;
    }
    let (xs, xl) = x.storage_and_layout();
    let xv = cpu_values("bottlenecks_infer", &xs, xl, "input")?;
    let mut held: Option<Scratch> = None;
    for (block, (main, downsample, gate)) in blocks.iter().zip(&planned) {
        let block_in: &[f32] = held.as_deref().unwrap_or(&xv);
        let h1 = stage(
            &main[0],
            &block.main[0],
            block_in,
            None,
            true,
            (None, packs),
        )?;
        let h2 = stage(&main[1], &block.main[1], &h1, None, true, (None, packs))?;
        drop(h1);
        let projected = match (downsample, &block.downsample) {
            (Some(g), Some(s)) => Some(stage(g, s, block_in, None, false, (None, packs))?),
            _ => None,
        };
        let shortcut = projected.as_deref().unwrap_or(block_in);
        let y = match gate {
            None => stage(
                &main[2],
                &block.main[2],
                &h2,
                Some(shortcut),
                true,
                (None, packs),
            )?,
            Some(PlannedGate::SqueezeExcite { mlp, reduced }) => {
                let g = &main[2];
                let pool = RowPool::new(g.batch * g.out_channels, false);
                let z = stage(g, &block.main[2], &h2, None, false, (Some(&pool), packs))?;
                // The parameters read in place, as `stage` reads its weight.
                let guards = mlp.tensors().map(|t| t.storage_and_layout());
                let names = [
                    "reduce weight",
                    "reduce bias",
                    "expand weight",
                    "expand bias",
                ];
                let mut views = Vec::with_capacity(names.len());
                for ((storage, layout), name) in guards.iter().zip(names) {
                    views.push(cpu_values("bottlenecks_infer", storage, layout, name)?);
                }
                let parts = [0, 1, 2, 3].map(|k| &views[k][..]);
                let mlp = MlpParams::from_parts(parts, g.out_channels, *reduced);
                timed(
                    || "se gate eval".into(),
                    || gated_join(g, mlp, z, pool.into_values(), shortcut),
                )
            }
            Some(PlannedGate::Cbam(plan)) => {
                let g = &main[2];
                let pool = RowPool::new(g.batch * g.out_channels, true);
                let z = stage(g, &block.main[2], &h2, None, false, (Some(&pool), packs))?;
                let pooled = pool.into_values();
                let dims = (g.batch, g.out_channels, g.out_pixels());
                let (ps, pl) = plan.packed.storage_and_layout();
                let packed = cpu_values("bottlenecks_infer", &ps, pl, "CBAM parameters")?;
                let shapes = (plan.reduced, &plan.spatial);
                let y = cbam_join_values(shapes, dims, (&z, Some(pooled)), shortcut, &packed);
                Scratch::from_vec(y)
            }
        };
        held = Some(y);
    }
    let Some(y) = held else {
        bail!("bottlenecks_infer: no blocks")
    };
    Tensor::from_vec(y.into_vec(), Shape::from(input), x.device())
}

/// A block's gate once its shapes are checked: squeeze-excite's MLP and its hidden width, or
/// CBAM's checked geometry and packed parameters.
enum PlannedGate<'a> {
    SqueezeExcite { mlp: GateMlp<'a>, reduced: usize },
    Cbam(CbamPlan),
}

/// `relu(z * gate(means) + shortcut)` written over `z`, with `means` = `mean_hw(z)` (taken in
/// the convolution's epilogue with `spatial_mean`'s arithmetic) and
/// `gate = sigmoid(fc2(relu(fc1(means))))`: the values of the gate's candle ops, then
/// `channel_gate_add_relu`'s join.
fn gated_join(
    g: &ConvGeometry,
    mlp: MlpParams<'_>,
    mut z: Scratch,
    means: Vec<f32>,
    shortcut: &[f32],
) -> Scratch {
    let (mut gate, _) = mlp_forward(means, mlp);
    sigmoid_in_place(&mut gate);
    channel_gate_add_relu_in_place((g.out_channels, g.out_pixels()), &mut z, &gate, shortcut);
    z
}

/// The output dims of a convolution, as a vector.
fn output_dims(g: &ConvGeometry) -> Vec<usize> {
    let (n, c, h, w) = g.output_dims();
    vec![n, c, h, w]
}

/// The geometry of `stage` over `input`, its scale and shift checked to hold one value per
/// output channel; `k` and `name` name the block and stage in errors.
fn geometry(
    input: &[usize],
    stage: &ConvAffineStage<'_>,
    k: usize,
    name: &str,
) -> Result<ConvGeometry> {
    let g = ConvGeometry::new(
        input,
        stage.conv_weight.dims(),
        stage.conv.stride,
        stage.conv.padding,
        stage.conv.groups,
    )?;
    let c = g.out_channels;
    if stage.scale.dims() != [c] || stage.shift.dims() != [c] {
        bail!(
            "bottlenecks_infer: block {k}'s {name} scale and shift must hold {c} values, got \
             {:?} and {:?}",
            stage.scale.dims(),
            stage.shift.dims()
        )
    }
    Ok(g)
}

/// One stage's output in a pooled buffer: `relu?(conv(input) * scale + shift (+ shortcut))`,
/// and with a [`RowPool`] the mean (and maximum) of each (image, channel) row of it; the
/// weight's layouts kept in `packs` where given.
fn stage(
    g: &ConvGeometry,
    s: &ConvAffineStage<'_>,
    input: &[f32],
    shortcut: Option<&[f32]>,
    relu: bool,
    (pool, packs): (Option<&RowPool>, Option<&EvalPacks>),
) -> Result<Scratch> {
    let read = |t: &Tensor, what: &str| -> Result<Vec<f32>> {
        let (storage, layout) = t.storage_and_layout();
        Ok(cpu_values("bottlenecks_infer", &storage, layout, what)?.into_owned())
    };
    let (scale, shift) = (read(s.scale, "scale")?, read(s.shift, "shift")?);
    let (ws, wl) = s.conv_weight.storage_and_layout();
    let w = cpu_values("bottlenecks_infer", &ws, wl, "conv weight")?;
    let layer = packs.map(|p| p.layer(s.conv_weight, &w)).transpose()?;
    let mut y = Scratch::take(g.batch * g.out_channels * g.out_pixels());
    forward_values_into(
        g,
        input,
        (&w, layer.as_deref()),
        (&scale, &shift),
        shortcut,
        relu,
        (&mut y, pool),
    );
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv2d::test_values;
    use crate::{conv_affine_add_relu_eval, conv_affine_eval};
    use candle_core::Device;

    /// A tensor of `dims` with `test_values(.., seed)` scaled by `scale`.
    fn t(dims: &[usize], seed: u32, scale: f32) -> Tensor {
        let n = dims.iter().product();
        let v: Vec<f32> = test_values(n, seed).iter().map(|x| x * scale).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// A stage's tensors: conv weight, scale (around 1) and shift.
    fn stage_tensors(w: &[usize], seed: u32) -> [Tensor; 3] {
        let c = w[0];
        let scale = (t(&[c], seed + 1, 0.5) + 1.0).unwrap();
        [t(w, seed, 0.3), scale, t(&[c], seed + 2, 0.2)]
    }

    fn stage<'a>(
        p: &'a [Tensor; 3],
        stride: usize,
        padding: usize,
        groups: usize,
    ) -> ConvAffineStage<'a> {
        ConvAffineStage {
            conv_weight: &p[0],
            conv: ConvParams {
                stride,
                padding,
                groups,
            },
            scale: &p[1],
            shift: &p[2],
        }
    }

    /// Panics unless `got` and `want` have the same shape and bits, and `got` is not mostly
    /// zero (a test that compared two zero maps would prove nothing).
    fn assert_same_bits(got: &Tensor, want: &Tensor) -> Result<()> {
        assert_eq!(got.dims(), want.dims());
        let (a, b) = (
            got.flatten_all()?.to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?,
        );
        assert!(
            a.iter().filter(|v| **v > 0.0).count() > a.len() / 4,
            "mostly zero"
        );
        let differ = crate::conv2d::differing_bits(&a, &b);
        assert_eq!(differ, 0, "{differ} of {} values differ", a.len());
        Ok(())
    }

    /// Two blocks (the first strided, grouped and downsampled, the second the identity
    /// shortcut) give the separate eval ops' values bit for bit, as a tensor without gradient,
    /// also with an [`EvalPacks`] kept over two calls.
    #[test]
    fn a_chain_equals_the_separate_eval_ops() -> Result<()> {
        let x = t(&[2, 8, 10, 10], 1, 1.0);
        let b0 = [
            stage_tensors(&[8, 8, 1, 1], 10),
            stage_tensors(&[8, 4, 3, 3], 20),
            stage_tensors(&[16, 8, 1, 1], 30),
            stage_tensors(&[16, 8, 1, 1], 40),
        ];
        let b1 = [
            stage_tensors(&[8, 16, 1, 1], 50),
            stage_tensors(&[8, 8, 3, 3], 60),
            stage_tensors(&[16, 8, 1, 1], 70),
        ];
        let blocks = [
            BottleneckEvalStages {
                main: [
                    stage(&b0[0], 1, 0, 1),
                    stage(&b0[1], 2, 1, 2),
                    stage(&b0[2], 1, 0, 1),
                ],
                downsample: Some(stage(&b0[3], 2, 0, 1)),
                gate: None,
            },
            BottleneckEvalStages {
                main: [
                    stage(&b1[0], 1, 0, 1),
                    stage(&b1[1], 1, 1, 1),
                    stage(&b1[2], 1, 0, 1),
                ],
                downsample: None,
                gate: None,
            },
        ];
        let mut want = x.clone();
        for block in &blocks {
            let run = |s: &ConvAffineStage<'_>, input: &Tensor, relu: bool| {
                conv_affine_eval(input, s.conv_weight, s.scale, s.shift, s.conv, relu)
            };
            let h1 = run(&block.main[0], &want, true)?;
            let h2 = run(&block.main[1], &h1, true)?;
            let shortcut = match &block.downsample {
                Some(d) => run(d, &want, false)?,
                None => want.clone(),
            };
            let s = &block.main[2];
            want =
                conv_affine_add_relu_eval(&h2, s.conv_weight, s.scale, s.shift, &shortcut, s.conv)?;
        }
        let got = bottlenecks_infer(&x, &blocks, None)?;
        assert!(!got.track_op());
        assert_same_bits(&got, &want)?;
        // Twice with one store for the pass: a store per convolution, the same bits.
        let packs = EvalPacks::new();
        for _ in 0..2 {
            assert_same_bits(&bottlenecks_infer(&x, &blocks, Some(&packs))?, &want)?;
        }
        assert_eq!(packs.layers(), 7);
        Ok(())
    }

    /// A block with a squeeze-excite gate equals the eval ops with the gate composed of
    /// `spatial_mean`, candle's matmuls, bias additions, `relu` and candle-nn's `sigmoid`, and
    /// `channel_gate_add_relu`, bit for bit; an MLP of the wrong shape is refused, naming the
    /// block.
    #[test]
    fn a_squeeze_excite_block_equals_the_composed_eval_ops() -> Result<()> {
        let x = t(&[2, 16, 6, 6], 3, 1.0);
        let p = [
            stage_tensors(&[8, 16, 1, 1], 10),
            stage_tensors(&[8, 8, 3, 3], 20),
            stage_tensors(&[16, 8, 1, 1], 30),
        ];
        let (reduce, reduce_b) = (t(&[4, 16, 1, 1], 7, 0.5), t(&[4], 11, 0.5));
        let (expand, expand_b) = (t(&[16, 4, 1, 1], 8, 0.5), t(&[16], 12, 0.5));
        let gate = |m: &Tensor| -> Result<Tensor> {
            let hidden = m
                .matmul(&reduce.flatten_from(1)?.t()?)?
                .broadcast_add(&reduce_b)?
                .relu()?;
            let out = hidden
                .matmul(&expand.flatten_from(1)?.t()?)?
                .broadcast_add(&expand_b)?;
            candle_nn::ops::sigmoid(&out)
        };
        let mlp = GateMlp {
            reduce_weight: &reduce,
            reduce_bias: &reduce_b,
            expand_weight: &expand,
            expand_bias: &expand_b,
        };
        let block = BottleneckEvalStages {
            main: [
                stage(&p[0], 1, 0, 1),
                stage(&p[1], 1, 1, 1),
                stage(&p[2], 1, 0, 1),
            ],
            downsample: None,
            gate: Some(EvalGate::SqueezeExcite(mlp)),
        };
        let run = |s: &ConvAffineStage<'_>, input: &Tensor, relu: bool| {
            conv_affine_eval(input, s.conv_weight, s.scale, s.shift, s.conv, relu)
        };
        let h1 = run(&block.main[0], &x, true)?;
        let z = run(&block.main[2], &run(&block.main[1], &h1, true)?, false)?;
        let want = crate::channel_gate_add_relu(&z, &gate(&crate::spatial_mean(&z)?)?, &x)?;
        assert_same_bits(&bottlenecks_infer(&x, &[block], None)?, &want)?;
        let narrow = expand_b.narrow(0, 0, 8)?;
        let wrong = GateMlp {
            expand_bias: &narrow,
            ..mlp
        };
        let block = BottleneckEvalStages {
            gate: Some(EvalGate::SqueezeExcite(wrong)),
            ..block
        };
        let err = bottlenecks_infer(&x, &[block], None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("block 0's squeeze-excite gate: gate MLP over 16 channels"),
            "{err}"
        );
        Ok(())
    }

    /// Mismatched parameters are refused by block and stage before anything runs.
    #[test]
    fn mismatched_stages_are_errors_naming_the_block() {
        let x = t(&[1, 8, 6, 6], 1, 1.0);
        let ok = [
            stage_tensors(&[8, 8, 1, 1], 10),
            stage_tensors(&[8, 8, 3, 3], 20),
            stage_tensors(&[8, 8, 1, 1], 30),
        ];
        let short_scale = [ok[1][0].clone(), t(&[7], 3, 1.0), ok[1][2].clone()];
        let block = |second: &'static str| -> Result<Tensor> {
            let mid = if second == "short" {
                &short_scale
            } else {
                &ok[1]
            };
            let b = BottleneckEvalStages {
                main: [
                    stage(&ok[0], 1, 0, 1),
                    stage(mid, 1, 1, 1),
                    stage(&ok[2], 1, 0, 1),
                ],
                downsample: None,
                gate: None,
            };
            bottlenecks_infer(&x, &[b, b], None)
        };
        assert!(block("ok").is_ok());
        let err = block("short").unwrap_err().to_string();
        assert!(
            err.contains("block 0's conv2 scale and shift must hold 8 values"),
            "{err}"
        );
        let err = bottlenecks_infer(&x, &[], None).unwrap_err().to_string();
        assert!(err.contains("no blocks"), "{err}");
        // 16 output channels over an 8-channel input with no downsample to match them.
        let wide = stage_tensors(&[16, 8, 1, 1], 40);
        let b = BottleneckEvalStages {
            main: [
                stage(&ok[0], 1, 0, 1),
                stage(&ok[1], 1, 1, 1),
                stage(&wide, 1, 0, 1),
            ],
            downsample: None,
            gate: None,
        };
        let err = bottlenecks_infer(&x, &[b], None).unwrap_err().to_string();
        assert!(
            err.contains("block 0's shortcut [1, 8, 6, 6] for output [1, 16, 6, 6]"),
            "{err}"
        );
    }
}
