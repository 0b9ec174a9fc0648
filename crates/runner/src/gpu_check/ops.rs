//! Conformance of every op of `mtanet-kernels`: the custom ops called directly (so their
//! `cuda_fwd` runs) and the public functions as the backbones call them, forward and every
//! input gradient.

use super::conformance::*;
use super::*;
use std::path::Path;

use anyhow::Context;
use candle_core::{Device, Tensor};
use mtanet_kernels::{Conv2d, MaxPool2d};

/// Convolution shapes of the backbones, each at batch >= 2:
/// (name, input dims, weight dims, stride, padding, groups).
pub(super) type ConvCase = (&'static str, [usize; 4], [usize; 4], usize, usize, usize);
pub(super) const CONV_CASES: [ConvCase; 6] = [
    ("stem 7x7/2", [2, 3, 40, 40], [16, 3, 7, 7], 2, 3, 1),
    ("dense 3x3", [2, 16, 14, 14], [24, 16, 3, 3], 1, 1, 1),
    (
        "grouped 3x3/2 g32",
        [2, 64, 11, 11],
        [64, 2, 3, 3],
        2,
        1,
        32,
    ),
    ("grouped 3x3 g32", [3, 128, 7, 7], [128, 4, 3, 3], 1, 1, 32),
    ("pointwise 1x1", [3, 32, 8, 8], [64, 32, 1, 1], 1, 0, 1),
    ("downsample 1x1/2", [2, 32, 9, 9], [64, 32, 1, 1], 2, 0, 1),
];
pub(super) fn check_ops(c: &mut Checker, fixtures: &Path) -> anyhow::Result<()> {
    for (i, &(name, xd, wd, stride, padding, groups)) in CONV_CASES.iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let x = cpu_randn(seed, &xd, 1.0)?;
        let w = cpu_randn(seed + 1, &wd, 0.2)?;
        let g = mtanet_kernels::ConvGeometry::new(&xd, &wd, stride, padding, groups)?;
        let (n, co, oh, ow) = g.output_dims();
        let r = cpu_randn(seed + 2, &[n, co, oh, ow], 1.0)?;
        let op = Conv2d {
            stride,
            padding,
            groups,
        };
        c.op(
            &format!("Conv2d op {name}"),
            &[x.clone(), w.clone()],
            &r,
            &["input", "weight"],
            &|t| t[0].apply_op2(&t[1], op),
        )?;
        c.op(
            &format!("conv2d() {name}"),
            &[x, w],
            &r,
            &["input", "weight"],
            &|t| mtanet_kernels::conv2d(&t[0], &t[1], stride, padding, groups),
        )?;
    }

    // Max-pool: the PyTorch fixtures (ties, ceil-mode edges, padding), op and public function.
    let path = fixtures.join("maxpool.safetensors");
    let f = candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut cases: Vec<&str> = f.keys().filter_map(|k| k.strip_suffix(".params")).collect();
    cases.sort();
    for case in cases {
        let p = f[&format!("{case}.params")].to_vec1::<i64>()?;
        let pool = MaxPool2d {
            kernel: p[0] as usize,
            stride: p[1] as usize,
            padding: p[2] as usize,
            ceil_mode: p[3] != 0,
        };
        let x = &f[&format!("{case}.input")];
        let gy = &f[&format!("{case}.grad_output")];
        for (label, public) in [("MaxPool2d op", false), ("max_pool2d()", true)] {
            let run = |t: &[Tensor]| {
                if public {
                    mtanet_kernels::max_pool2d(
                        &t[0],
                        pool.kernel,
                        pool.stride,
                        pool.padding,
                        pool.ceil_mode,
                    )
                } else {
                    t[0].apply_op1(pool)
                }
            };
            let item = format!("{label} {case} (batch {})", x.dim(0)?);
            let (y_ref, g_ref) =
                value_and_grads(std::slice::from_ref(x), gy, &c.reference.clone(), &run)?;
            let (y, g) = value_and_grads(std::slice::from_ref(x), gy, &c.dev.clone(), &run)?;
            let want_y = &f[&format!("{case}.output")];
            let want_g = &f[&format!("{case}.grad_input")];
            c.push(&item, "output", &y, &y_ref, Some((want_y, 0.0)))?;
            c.push(&item, "grad input", &g[0], &g_ref[0], Some((want_g, 1e-6)))?;
        }
    }
    // A stem-sized random max-pool at batch 4 (no ties), both modes.
    for (ceil, padding) in [(false, 1), (true, 0)] {
        let x = cpu_randn(900 + padding as u64, &[4, 16, 28, 28], 1.0)?;
        let pool = MaxPool2d {
            kernel: 3,
            stride: 2,
            padding,
            ceil_mode: ceil,
        };
        let g = mtanet_kernels::PoolGeometry::new(x.dims(), 3, 2, padding, ceil)?;
        let r = cpu_randn(950, &[4, 16, g.rows.output, g.cols.output], 1.0)?;
        c.op(
            &format!("MaxPool2d op 3x3/2 p{padding} ceil={ceil} (batch 4)"),
            &[x],
            &r,
            &["input"],
            &|t| t[0].apply_op1(pool),
        )?;
    }
    // Residual add + ReLU.
    let a = cpu_randn(1000, &[2, 8, 5, 5], 1.0)?;
    let b = cpu_randn(1001, &[2, 8, 5, 5], 1.0)?;
    let r = cpu_randn(1002, &[2, 8, 5, 5], 1.0)?;
    c.op("add_relu()", &[a, b], &r, &["a", "b"], &|t| {
        mtanet_kernels::add_relu(&t[0], &t[1])
    })?;
    check_fused_ops(c)?;
    check_optimizer_steps(c)
}
/// The BatchNorm, gate and residual ops. Their op structs are private to `mtanet-kernels`; the
/// public functions apply them directly to f32 tensors on the CPU and on CUDA (no composed
/// fallback there), so each row runs the op's `cuda_fwd` and its backward ops' on the device.
/// Odd sizes (inner sizes off the 16-lane and 32-lane blocks), batch >= 2, and a strided
/// (transposed) input for each op family.
pub(super) fn check_fused_ops(c: &mut Checker) -> anyhow::Result<()> {
    let bn = |relu: bool, strided: bool| {
        move |t: &[Tensor]| -> candle_core::Result<Tensor> {
            let x = if strided {
                t[0].transpose(2, 3)?
            } else {
                t[0].clone()
            };
            Ok(mtanet_kernels::batch_norm_train(&x, &t[1], &t[2], 1e-5, relu)?.0)
        }
    };
    // (label, x dims as stored, strided: the op sees x transposed in its last two axes)
    let bn_cases: [(&str, &[usize], bool); 4] = [
        ("(2, 5, 7, 9)", &[2, 5, 7, 9], false),
        ("(3, 4, 17, 19)", &[3, 4, 17, 19], false),
        ("(2, 3, 11, 5) transposed", &[2, 3, 11, 5], true),
        ("(6, 7) NC", &[6, 7], false),
    ];
    for (i, &(label, dims, strided)) in bn_cases.iter().enumerate() {
        let seed = 1100 + 10 * i as u64;
        let ch = dims[1];
        // A channel offset larger than the spread, as after a ReLU: the two-pass variance.
        let x = (cpu_randn(seed, dims, 1.0)? + 3.0)?;
        let w = (cpu_randn(seed + 1, &[ch], 0.3)? + 1.0)?;
        let b = cpu_randn(seed + 2, &[ch], 0.3)?;
        let mut out_dims = dims.to_vec();
        if strided {
            out_dims.swap(2, 3);
        }
        let r = cpu_randn(seed + 3, &out_dims, 1.0)?;
        for relu in [false, true] {
            let item = format!("BatchNormTrain op {label} relu={relu}");
            let inputs = [x.clone(), w.clone(), b.clone()];
            c.op(
                &item,
                &inputs,
                &r,
                &["input", "weight", "bias"],
                &bn(relu, strided),
            )?;
            // The statistics the op hands back for the running averages.
            let stats = |dev: &Device| -> anyhow::Result<[Tensor; 2]> {
                let on = |t: &Tensor| t.to_device(dev);
                let xd = if strided {
                    on(&x)?.transpose(2, 3)?
                } else {
                    on(&x)?
                };
                let (_, s) = mtanet_kernels::batch_norm_train(&xd, &on(&w)?, &on(&b)?, 1e-5, relu)?;
                Ok([
                    Tensor::new(s.mean.as_slice(), &Device::Cpu)?,
                    Tensor::new(s.var.as_slice(), &Device::Cpu)?,
                ])
            };
            let [m_ref, v_ref] = stats(&c.reference.clone())?;
            let [m, v] = stats(&c.dev.clone())?;
            c.push(&item, "batch mean", &m, &m_ref, None)?;
            c.push(&item, "batch var", &v, &v_ref, None)?;
        }
        if dims.len() == 4 && !strided {
            let scale = cpu_randn(seed + 4, &[ch], 0.5)?;
            let shift = cpu_randn(seed + 5, &[ch], 0.5)?;
            for relu in [false, true] {
                c.op(
                    &format!("ChannelAffine op {label} relu={relu}"),
                    &[x.clone(), scale.clone(), shift.clone()],
                    &r,
                    &["input", "scale", "shift"],
                    &|t| mtanet_kernels::channel_affine(&t[0], &t[1], &t[2], relu),
                )?;
            }
        }
    }
    check_fused_elementwise(c)
}

/// The fused channel-affine, gate, channel-pooling and residual ops on both devices.
fn check_fused_elementwise(c: &mut Checker) -> anyhow::Result<()> {
    // ChannelAffine on a strided input.
    let x = cpu_randn(1150, &[2, 3, 11, 5], 1.0)?;
    let scale = cpu_randn(1151, &[3], 0.5)?;
    let shift = cpu_randn(1152, &[3], 0.5)?;
    let r = cpu_randn(1153, &[2, 3, 5, 11], 1.0)?;
    c.op(
        "ChannelAffine op (2, 3, 11, 5) transposed relu=true",
        &[x, scale, shift],
        &r,
        &["input", "scale", "shift"],
        &|t| mtanet_kernels::channel_affine(&t[0].transpose(2, 3)?, &t[1], &t[2], true),
    )?;

    // Gates: channel (N, C) and spatial (N, 1, H, W), plain and on a transposed input.
    for (i, &(n, ch, h, w)) in [(2, 5, 7, 9), (3, 33, 6, 11)].iter().enumerate() {
        let seed = 1200 + 10 * i as u64;
        let label = format!("({n}, {ch}, {h}, {w})");
        let x = cpu_randn(seed, &[n, ch, h, w], 1.0)?;
        let gc = cpu_randn(seed + 1, &[n, ch], 1.0)?;
        let gs = cpu_randn(seed + 2, &[n, 1, h, w], 1.0)?;
        let r = cpu_randn(seed + 3, &[n, ch, h, w], 1.0)?;
        c.op(
            &format!("Gate op channel {label}"),
            &[x.clone(), gc.clone()],
            &r,
            &["input", "gate"],
            &|t| mtanet_kernels::channel_gate(&t[0], &t[1]),
        )?;
        c.op(
            &format!("Gate op spatial {label}"),
            &[x.clone(), gs.clone()],
            &r,
            &["input", "gate"],
            &|t| mtanet_kernels::spatial_gate(&t[0], &t[1]),
        )?;
        let rt = r.transpose(2, 3)?.contiguous()?;
        c.op(
            &format!("Gate op channel {label} transposed"),
            &[x.clone(), gc],
            &rt,
            &["input", "gate"],
            &|t| mtanet_kernels::channel_gate(&t[0].transpose(2, 3)?, &t[1]),
        )?;
        c.op(
            &format!("Gate op spatial {label} transposed"),
            &[x.clone(), gs.transpose(2, 3)?.contiguous()?],
            &rt,
            &["input", "gate"],
            &|t| mtanet_kernels::spatial_gate(&t[0].transpose(2, 3)?, &t[1]),
        )?;
        let r2 = cpu_randn(seed + 4, &[n, 2, h, w], 1.0)?;
        c.op(
            &format!("ChannelMaxMean op {label}"),
            std::slice::from_ref(&x),
            &r2,
            &["input"],
            &|t| mtanet_kernels::channel_max_mean(&t[0]),
        )?;
        c.op(
            &format!("ChannelMaxMean op {label} transposed"),
            &[x],
            &r2.transpose(2, 3)?.contiguous()?,
            &["input"],
            &|t| mtanet_kernels::channel_max_mean(&t[0].transpose(2, 3)?),
        )?;
    }
    // Ties in the channel max: the gradient goes to the first maximal channel on every device.
    let x = cpu_randn(1300, &[2, 4, 3, 5], 1.0)?.round()?;
    let r = cpu_randn(1301, &[2, 2, 3, 5], 1.0)?;
    c.op(
        "ChannelMaxMean op (2, 4, 3, 5) ties",
        &[x],
        &r,
        &["input"],
        &|t| mtanet_kernels::channel_max_mean(&t[0]),
    )?;

    // Residual join (AddRelu forward, ReluMask backward): odd size and a strided operand.
    let a = cpu_randn(1400, &[3, 7, 5, 3], 1.0)?;
    let b = cpu_randn(1401, &[3, 7, 3, 5], 1.0)?;
    let r = cpu_randn(1402, &[3, 7, 5, 3], 1.0)?;
    c.op(
        "AddRelu op (3, 7, 5, 3), b transposed",
        &[a, b],
        &r,
        &["a", "b"],
        &|t| mtanet_kernels::add_relu(&t[0], &t[1].transpose(2, 3)?),
    )?;
    Ok(())
}
/// The in-place optimizer updates (SGD with momentum, Adam): two steps on both devices from
/// the same start; the parameter and every state buffer compared.
pub(super) fn check_optimizer_steps(c: &mut Checker) -> anyhow::Result<()> {
    let p0 = cpu_randn(1500, &[3, 37], 1.0)?;
    let grads = [
        cpu_randn(1501, &[3, 37], 1.0)?,
        cpu_randn(1502, &[3, 37], 1.0)?,
    ];
    let run = |dev: &Device, adam: bool| -> anyhow::Result<Vec<Tensor>> {
        // `copy` gives each run its own storage (the updates are in place).
        let p = p0.to_device(dev)?.copy()?;
        let m = p.zeros_like()?;
        let v = p.zeros_like()?;
        for (step, g) in grads.iter().enumerate() {
            let g = g.to_device(dev)?;
            if adam {
                let t = step as i32 + 1;
                mtanet_kernels::adam_step(&p, &m, &v, &g, 1e-2, [0.9, 0.999], 1e-8, 1e-4, 0.5, t)?;
            } else {
                mtanet_kernels::sgd_momentum_step(&p, &m, &g, 0.1, 0.9, 1e-4, 0.5)?;
            }
        }
        Ok(vec![p, m, v])
    };
    for (label, adam, names) in [
        (
            "sgd_momentum_step() (3, 37)",
            false,
            &["param", "momentum"][..],
        ),
        ("adam_step() (3, 37)", true, &["param", "m", "v"][..]),
    ] {
        let want = run(&c.reference.clone(), adam)?;
        let got = run(&c.dev.clone(), adam)?;
        for ((name, a), b) in names.iter().zip(&got).zip(&want) {
            c.push(label, &format!("{name} after 2 steps"), a, b, None)?;
        }
    }
    Ok(())
}
