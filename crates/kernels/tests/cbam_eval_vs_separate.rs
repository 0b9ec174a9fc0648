//! CBAM's gates and residual join in evaluation as one op (`cbam_add_relu_eval`) against the
//! ops the backbone composes them from in eval mode: `spatial_mean_max`, the shared MLP over the
//! stacked rows with the halves summed, `sigmoid`, `channel_gate`, `channel_max_mean`, `conv2d`,
//! `channel_affine` (the spatial BatchNorm's eval scale and shift), `sigmoid` and
//! `spatial_gate_add_relu`. The same output bit for bit, over maps from 4x4 to 28x28, batches
//! of 1 to 8 and channel counts of 8 to 64.

use candle_core::{Result, Tensor, Var};
use mtanet_kernels::{
    cbam_add_relu_eval, channel_affine, channel_gate, channel_max_mean, conv2d,
    spatial_gate_add_relu, spatial_mean_max, CbamEval, ConvParams, GateMlp,
};

mod support;
use support::{differing_bits, pseudo_random, values};

/// A CBAM gate's parameters in eval mode: the MLP `(R, C)` / `(C, R)` with biases, the 7x7
/// spatial weight and the spatial BatchNorm's scale and shift.
struct Params {
    reduce_w: Tensor,
    reduce_b: Tensor,
    expand_w: Tensor,
    expand_b: Tensor,
    spatial_w: Tensor,
    scale: Tensor,
    shift: Tensor,
}

impl Params {
    fn new(channels: usize, reduced: usize, seed: u64) -> Result<Self> {
        Ok(Self {
            reduce_w: pseudo_random(&[reduced, channels], seed, 0.5, 0.0)?,
            reduce_b: pseudo_random(&[reduced], seed + 1, 0.2, 0.0)?,
            expand_w: pseudo_random(&[channels, reduced], seed + 2, 0.5, 0.0)?,
            expand_b: pseudo_random(&[channels], seed + 3, 0.2, 0.0)?,
            spatial_w: pseudo_random(&[1, 2, 7, 7], seed + 4, 0.3, 0.0)?,
            scale: pseudo_random(&[1], seed + 5, 0.5, 1.0)?,
            shift: pseudo_random(&[1], seed + 6, 0.5, 0.0)?,
        })
    }

    fn gate(&self) -> CbamEval<'_> {
        CbamEval {
            channel: GateMlp {
                reduce_weight: &self.reduce_w,
                reduce_bias: &self.reduce_b,
                expand_weight: &self.expand_w,
                expand_bias: &self.expand_b,
            },
            spatial_weight: &self.spatial_w,
            spatial_conv: ConvParams {
                stride: 1,
                padding: 3,
                groups: 1,
            },
            spatial_scale: &self.scale,
            spatial_shift: &self.shift,
        }
    }

    /// The block's gate and join as the backbone composes them in eval mode.
    fn composed(&self, z: &Tensor, shortcut: &Tensor) -> Result<Tensor> {
        let pooled = spatial_mean_max(z)?;
        let (_, n, c) = pooled.dims3()?;
        let hidden = pooled
            .reshape((2 * n, c))?
            .matmul(&self.reduce_w.t()?)?
            .broadcast_add(&self.reduce_b)?
            .relu()?;
        let att = hidden
            .matmul(&self.expand_w.t()?)?
            .broadcast_add(&self.expand_b)?
            .reshape((2, n, c))?
            .sum(0)?;
        let u = channel_gate(z, &candle_nn::ops::sigmoid(&att)?)?;
        let conv = conv2d(&channel_max_mean(&u)?, &self.spatial_w, 1, 3, 1)?;
        let logits = channel_affine(&conv, &self.scale, &self.shift, false)?;
        spatial_gate_add_relu(&u, &candle_nn::ops::sigmoid(&logits)?, shortcut)
    }
}

#[test]
fn the_eval_gate_equals_the_composed_ops_bit_for_bit() -> Result<()> {
    let cases: [(usize, usize, usize); 5] =
        [(2, 16, 6), (3, 32, 7), (4, 64, 4), (1, 8, 14), (8, 32, 28)];
    for (i, &(n, c, size)) in cases.iter().enumerate() {
        let seed = 500 + 20 * i as u64;
        let z = pseudo_random(&[n, c, size, size], seed, 1.0, 0.0)?;
        let shortcut = pseudo_random(&[n, c, size, size], seed + 7, 1.0, 0.1)?;
        let params = Params::new(c, c / 4, seed + 9)?;
        let fused = cbam_add_relu_eval(&z, params.gate(), &shortcut)?;
        let reference = params.composed(&z, &shortcut)?;
        assert_eq!(fused.dims(), reference.dims(), "case {i}");
        let differ = differing_bits(&values(&fused)?, &values(&reference)?);
        assert_eq!(
            differ,
            0,
            "case {i} {:?}: {differ} values differ",
            (n, c, size)
        );
    }
    Ok(())
}

#[test]
fn bad_shapes_are_errors() -> Result<()> {
    let z = pseudo_random(&[2, 8, 6, 6], 1, 1.0, 0.0)?;
    let params = Params::new(8, 2, 3)?;
    let short = pseudo_random(&[2, 8, 6, 5], 2, 1.0, 0.0)?;
    let err = cbam_add_relu_eval(&z, params.gate(), &short)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shortcut"), "{err}");

    let mut shrinking = params.gate();
    shrinking.spatial_conv.padding = 1;
    let err = cbam_add_relu_eval(&z, shrinking, &z)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not one map of the same size"), "{err}");

    let two = pseudo_random(&[2], 4, 1.0, 0.0)?;
    let mut wide = params.gate();
    wide.spatial_scale = &two;
    let err = cbam_add_relu_eval(&z, wide, &z).unwrap_err().to_string();
    assert!(err.contains("scale must hold one value"), "{err}");

    Ok(())
}

/// Eval mode is differentiated by checks (eval-mode gradients of a backbone): the op's gradients
/// of the input, the shortcut and all seven parameters equal the composed ops'.
#[test]
fn the_eval_gate_has_the_composed_ops_gradients() -> Result<()> {
    for (i, &(n, c, size)) in [(2, 16, 6), (3, 32, 7)].iter().enumerate() {
        let seed = 900 + 20 * i as u64;
        let var = |shape: &[usize], seed, scale, offset| {
            Var::from_tensor(&pseudo_random(shape, seed, scale, offset)?)
        };
        let z = var(&[n, c, size, size], seed, 1.0, 0.0)?;
        let shortcut = var(&[n, c, size, size], seed + 7, 1.0, 0.1)?;
        let fixed = Params::new(c, c / 4, seed + 9)?;
        let mut named = Vec::new();
        for (name, t) in [
            ("reduce w", &fixed.reduce_w),
            ("reduce b", &fixed.reduce_b),
            ("expand w", &fixed.expand_w),
            ("expand b", &fixed.expand_b),
            ("spatial w", &fixed.spatial_w),
            ("scale", &fixed.scale),
            ("shift", &fixed.shift),
        ] {
            named.push((name, Var::from_tensor(t)?));
        }
        let t = |i: usize| named[i].1.as_tensor().clone();
        let tracked = Params {
            reduce_w: t(0),
            reduce_b: t(1),
            expand_w: t(2),
            expand_b: t(3),
            spatial_w: t(4),
            scale: t(5),
            shift: t(6),
        };
        let r = pseudo_random(&[n, c, size, size], seed + 11, 1.0, 0.0)?;
        let fused = cbam_add_relu_eval(&z, tracked.gate(), &shortcut)?;
        let gf = (fused * &r)?.sum_all()?.backward()?;
        let gs = (tracked.composed(&z, &shortcut)? * &r)?
            .sum_all()?
            .backward()?;
        let mut all = vec![("z", &z), ("shortcut", &shortcut)];
        all.extend(named.iter().map(|(name, v)| (*name, v)));
        for (name, v) in all {
            let (Some(a), Some(b)) = (gf.get(v), gs.get(v)) else {
                panic!("case {i}: {name}: a gradient is missing")
            };
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
            let err = diff / scale;
            assert!(err < 1e-4, "case {i}: {name}: rel err {err}");
        }
    }
    Ok(())
}
