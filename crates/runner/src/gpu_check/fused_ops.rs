//! Conformance of the fused ops of `mtanet-kernels`: training BatchNorm (+ ReLU) and the
//! eval-mode channel affine, the SE / CBAM gates and channel pooling, the residual join, and
//! the in-place SGD / Adam updates; in the CPU mode each against the same formula written with
//! candle's tensor ops.

use super::conformance::*;
use super::*;

use candle_core::{Device, Tensor, Var};

/// BatchNorm in training mode from candle's ops: batch mean and biased variance per channel
/// over `(N, C, ...)`, normalised, scaled, shifted (and rectified); also the mean and variance.
fn batch_norm_composed(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    relu: bool,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let dims = x.dims().to_vec();
    let (n, ch) = (dims[0], dims[1]);
    let x3 = x.contiguous()?.reshape((n, ch, ()))?;
    let mean = x3.mean_keepdim(2)?.mean_keepdim(0)?;
    let xc = x3.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(2)?.mean_keepdim(0)?;
    let y = xc
        .broadcast_div(&(&var + eps)?.sqrt()?)?
        .broadcast_mul(&w.reshape((1, ch, 1))?)?
        .broadcast_add(&b.reshape((1, ch, 1))?)?;
    let y = if relu { y.relu()? } else { y };
    Ok((y.reshape(dims)?, mean.flatten_all()?, var.flatten_all()?))
}

/// `x * scale[c] + shift[c]` (then ReLU) from candle's broadcasting ops, `x` (N, C, H, W).
fn channel_affine_composed(
    x: &Tensor,
    s: &Tensor,
    b: &Tensor,
    relu: bool,
) -> candle_core::Result<Tensor> {
    let ch = x.dim(1)?;
    let y = x
        .broadcast_mul(&s.reshape((1, ch, 1, 1))?)?
        .broadcast_add(&b.reshape((1, ch, 1, 1))?)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// CBAM's channel pooling from candle's reductions: `cat([max over C, mean over C], 1)`.
fn channel_max_mean_composed(x: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::cat(&[x.max_keepdim(1)?, x.mean_keepdim(1)?], 1)
}

/// Whether the fused BatchNorm / affine ops can run on the device under test: on CUDA,
/// `MTANET_CUDA_FUSED=0` turns them off (they then refuse CUDA tensors).
fn fused_norm_available(c: &Checker) -> bool {
    !c.dev.is_cuda() || mtanet_kernels::cuda_fused_ops()
}

/// The BatchNorm, gate and residual ops. Their op structs are private to `mtanet-kernels`; the
/// public functions apply them directly to f32 tensors on the CPU and on CUDA (no composed
/// fallback there), so each row runs the op's `cuda_fwd` and its backward ops' on the device.
/// Odd sizes (inner sizes off the 16-lane and 32-lane blocks), batch >= 2, and a strided
/// (transposed) input for each op family.
pub(super) fn check_fused_ops(c: &mut Checker) {
    if fused_norm_available(c) {
        check_batch_norm(c);
        check_running_stats(c);
    } else {
        c.push_skip(
            "BatchNormTrain / ChannelAffine ops",
            "MTANET_CUDA_FUSED=0: the fused BatchNorm ops do not run on CUDA",
        );
    }
    check_fused_elementwise(c);
}

/// Training BatchNorm (output, gradients, batch statistics) and the eval-mode channel affine.
fn check_batch_norm(c: &mut Checker) {
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
    let bn_ref = |relu: bool, strided: bool| {
        move |t: &[Tensor]| -> candle_core::Result<Tensor> {
            let x = if strided {
                t[0].transpose(2, 3)?
            } else {
                t[0].clone()
            };
            Ok(batch_norm_composed(&x, &t[1], &t[2], 1e-5, relu)?.0)
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
        let mut data = None;
        c.guard(
            &format!("BatchNormTrain op {label}"),
            &format!("{dims:?}"),
            |_| {
                // A channel offset larger than the spread, as after a ReLU: the two-pass variance.
                let x = (cpu_randn(seed, dims, 1.0)? + 3.0)?;
                let w = (cpu_randn(seed + 1, &[ch], 0.3)? + 1.0)?;
                let b = cpu_randn(seed + 2, &[ch], 0.3)?;
                let mut out_dims = dims.to_vec();
                if strided {
                    out_dims.swap(2, 3);
                }
                let r = cpu_randn(seed + 3, &out_dims, 1.0)?;
                data = Some((x, w, b, r));
                Ok(())
            },
        );
        let Some((x, w, b, r)) = data else { continue };
        for relu in [false, true] {
            let item = format!("BatchNormTrain op {label} relu={relu}");
            let inputs = [x.clone(), w.clone(), b.clone()];
            c.op_with(
                &item,
                &inputs,
                &r,
                &["input", "weight", "bias"],
                &bn(relu, strided),
                Some(&bn_ref(relu, strided)),
            );
            // The statistics the op hands back for the running averages.
            c.guard(&item, &shapes(&inputs), |c| {
                c.injected(&item)?;
                let stats = |dev: &Device, ours: bool| -> anyhow::Result<[Tensor; 2]> {
                    let on = |t: &Tensor| t.to_device(dev);
                    let xd = if strided {
                        on(&x)?.transpose(2, 3)?
                    } else {
                        on(&x)?
                    };
                    if !ours {
                        let (_, m, v) = batch_norm_composed(&xd, &on(&w)?, &on(&b)?, 1e-5, relu)?;
                        return Ok([m, v]);
                    }
                    // On CUDA the statistics stay on the device (`BatchStats::device`).
                    let (_, s) =
                        mtanet_kernels::batch_norm_train(&xd, &on(&w)?, &on(&b)?, 1e-5, relu)?;
                    let (m, v) = s.mean_var()?;
                    Ok([m, v])
                };
                let independent = c.independent;
                let what = if independent {
                    format!("{}, candle ops", device_name(&c.reference))
                } else {
                    device_name(&c.reference)
                };
                let [m_ref, v_ref] = stats(&c.reference.clone(), !independent)?;
                let [m, v] = stats(&c.dev.clone(), true)?;
                let tol = c.tolerance;
                c.push_row(tol, &item, "batch mean", (&m, &m_ref, &what), None)?;
                c.push_row(tol, &item, "batch var", (&v, &v_ref, &what), None)
            });
        }
        if dims.len() == 4 && !strided {
            let mut params = None;
            c.guard(
                &format!("ChannelAffine op {label}"),
                &format!("{dims:?}"),
                |_| {
                    params = Some((
                        cpu_randn(seed + 4, &[ch], 0.5)?,
                        cpu_randn(seed + 5, &[ch], 0.5)?,
                    ));
                    Ok(())
                },
            );
            let Some((scale, shift)) = params else {
                continue;
            };
            for relu in [false, true] {
                c.op_with(
                    &format!("ChannelAffine op {label} relu={relu}"),
                    &[x.clone(), scale.clone(), shift.clone()],
                    &r,
                    &["input", "scale", "shift"],
                    &|t| mtanet_kernels::channel_affine(&t[0], &t[1], &t[2], relu),
                    Some(&|t| channel_affine_composed(&t[0], &t[1], &t[2], relu)),
                );
            }
        }
    }
    // ChannelAffine on a strided input.
    let mut data = None;
    c.guard(
        "ChannelAffine op (2, 3, 11, 5) transposed relu=true",
        "[2, 3, 11, 5]",
        |_| {
            data = Some([
                cpu_randn(1150, &[2, 3, 11, 5], 1.0)?,
                cpu_randn(1151, &[3], 0.5)?,
                cpu_randn(1152, &[3], 0.5)?,
                cpu_randn(1153, &[2, 3, 5, 11], 1.0)?,
            ]);
            Ok(())
        },
    );
    if let Some([x, scale, shift, r]) = data {
        c.op_with(
            "ChannelAffine op (2, 3, 11, 5) transposed relu=true",
            &[x, scale, shift],
            &r,
            &["input", "scale", "shift"],
            &|t| mtanet_kernels::channel_affine(&t[0].transpose(2, 3)?, &t[1], &t[2], true),
            Some(&|t| channel_affine_composed(&t[0].transpose(2, 3)?, &t[1], &t[2], true)),
        );
    }
}

/// The running averages after two training passes: [`mtanet_kernels::BatchStats::update_running`]
/// (on CUDA a device kernel reading the device statistics, no host copy) against, in the CPU
/// mode, PyTorch's formula written with candle's ops on the composed statistics.
fn check_running_stats(c: &mut Checker) {
    const ITEM: &str = "BatchStats::update_running (3, 6, 5, 7) x2";
    const MOMENTUM: f64 = 0.1;
    c.guard(ITEM, "[3, 6, 5, 7]", |c| {
        c.injected(ITEM)?;
        let dims = [3, 6, 5, 7];
        let xs = [
            (cpu_randn(1160, &dims, 1.0)? + 2.0)?,
            (cpu_randn(1161, &dims, 0.5)? - 1.0)?,
        ];
        let w = (cpu_randn(1162, &[6], 0.3)? + 1.0)?;
        let b = cpu_randn(1163, &[6], 0.3)?;
        let mean0 = cpu_randn(1164, &[6], 0.5)?;
        let var0 = (cpu_randn(1165, &[6], 0.2)?.abs()? + 0.5)?;
        let count = (3 * 5 * 7) as f64;
        let run = |dev: &Device, ours: bool| -> anyhow::Result<[Tensor; 2]> {
            // Own storage for each run: the update is in place.
            let rm = Var::from_tensor(&mean0.to_device(dev)?.copy()?)?;
            let rv = Var::from_tensor(&var0.to_device(dev)?.copy()?)?;
            let (wd, bd) = (w.to_device(dev)?, b.to_device(dev)?);
            for x in &xs {
                let xd = x.to_device(dev)?;
                if ours {
                    let (_, s) = mtanet_kernels::batch_norm_train(&xd, &wd, &bd, 1e-5, false)?;
                    s.update_running(&rm, &rv, MOMENTUM)?;
                } else {
                    let (_, m, v) = batch_norm_composed(&xd, &wd, &bd, 1e-5, false)?;
                    let keep = 1.0 - MOMENTUM;
                    rm.set(&((rm.as_tensor() * keep)? + (m * MOMENTUM)?)?)?;
                    let unbiased = MOMENTUM * count / (count - 1.0);
                    rv.set(&((rv.as_tensor() * keep)? + (v * unbiased)?)?)?;
                }
            }
            Ok([rm.as_tensor().clone(), rv.as_tensor().clone()])
        };
        let independent = c.independent;
        let what = if independent {
            format!("{}, candle ops", device_name(&c.reference))
        } else {
            device_name(&c.reference)
        };
        let [m_ref, v_ref] = run(&c.reference.clone(), !independent)?;
        let [m, v] = run(&c.dev.clone(), true)?;
        let tol = c.tolerance;
        c.push_row(tol, ITEM, "running mean", (&m, &m_ref, &what), None)?;
        c.push_row(tol, ITEM, "running var", (&v, &v_ref, &what), None)
    });
}

/// The fused gate, channel-pooling and residual ops on both devices.
fn check_fused_elementwise(c: &mut Checker) {
    // Gates: channel (N, C) and spatial (N, 1, H, W), plain and on a transposed input.
    for (i, &(n, ch, h, w)) in [(2, 5, 7, 9), (3, 33, 6, 11)].iter().enumerate() {
        let seed = 1200 + 10 * i as u64;
        let label = format!("({n}, {ch}, {h}, {w})");
        let mut data = None;
        c.guard(
            &format!("Gate op {label}"),
            &format!("[{n}, {ch}, {h}, {w}]"),
            |_| {
                data = Some([
                    cpu_randn(seed, &[n, ch, h, w], 1.0)?,
                    cpu_randn(seed + 1, &[n, ch], 1.0)?,
                    cpu_randn(seed + 2, &[n, 1, h, w], 1.0)?,
                    cpu_randn(seed + 3, &[n, ch, h, w], 1.0)?,
                    cpu_randn(seed + 4, &[n, 2, h, w], 1.0)?,
                ]);
                Ok(())
            },
        );
        let Some([x, gc, gs, r, r2]) = data else {
            continue;
        };
        let channel_ref = |x: &Tensor, g: &Tensor| {
            let (n, ch) = g.dims2()?;
            x.broadcast_mul(&g.reshape((n, ch, 1, 1))?)
        };
        c.op_with(
            &format!("Gate op channel {label}"),
            &[x.clone(), gc.clone()],
            &r,
            &["input", "gate"],
            &|t| mtanet_kernels::channel_gate(&t[0], &t[1]),
            Some(&|t| channel_ref(&t[0], &t[1])),
        );
        c.op_with(
            &format!("Gate op spatial {label}"),
            &[x.clone(), gs.clone()],
            &r,
            &["input", "gate"],
            &|t| mtanet_kernels::spatial_gate(&t[0], &t[1]),
            Some(&|t| t[0].broadcast_mul(&t[1])),
        );
        let transposed = (|| -> candle_core::Result<_> {
            Ok((
                r.transpose(2, 3)?.contiguous()?,
                gs.transpose(2, 3)?.contiguous()?,
                r2.transpose(2, 3)?.contiguous()?,
            ))
        })();
        let (rt, gst, r2t) = match transposed {
            Ok(t) => t,
            Err(e) => {
                c.push_error(&format!("Gate op {label} transposed"), "", &e.to_string());
                continue;
            }
        };
        c.op_with(
            &format!("Gate op channel {label} transposed"),
            &[x.clone(), gc],
            &rt,
            &["input", "gate"],
            &|t| mtanet_kernels::channel_gate(&t[0].transpose(2, 3)?, &t[1]),
            Some(&|t| channel_ref(&t[0].transpose(2, 3)?, &t[1])),
        );
        c.op_with(
            &format!("Gate op spatial {label} transposed"),
            &[x.clone(), gst],
            &rt,
            &["input", "gate"],
            &|t| mtanet_kernels::spatial_gate(&t[0].transpose(2, 3)?, &t[1]),
            Some(&|t| t[0].transpose(2, 3)?.broadcast_mul(&t[1])),
        );
        c.op_with(
            &format!("ChannelMaxMean op {label}"),
            std::slice::from_ref(&x),
            &r2,
            &["input"],
            &|t| mtanet_kernels::channel_max_mean(&t[0]),
            Some(&|t| channel_max_mean_composed(&t[0])),
        );
        c.op_with(
            &format!("ChannelMaxMean op {label} transposed"),
            &[x],
            &r2t,
            &["input"],
            &|t| mtanet_kernels::channel_max_mean(&t[0].transpose(2, 3)?),
            Some(&|t| channel_max_mean_composed(&t[0].transpose(2, 3)?)),
        );
    }
    // Ties in the channel max: the gradient goes to the first maximal channel on every device.
    // The composed reference breaks each tie towards the first channel by subtracting
    // 1e-6 * channel from the (integer) inputs: the max moves by < 1e-5, the gradient not at all.
    let mut data = None;
    c.guard(
        "ChannelMaxMean op (2, 4, 3, 5) ties",
        "[2, 4, 3, 5]",
        |_| {
            data = Some([
                cpu_randn(1300, &[2, 4, 3, 5], 1.0)?.round()?,
                cpu_randn(1301, &[2, 2, 3, 5], 1.0)?,
            ]);
            Ok(())
        },
    );
    if let Some([x, r]) = data {
        c.op_with(
            "ChannelMaxMean op (2, 4, 3, 5) ties",
            &[x],
            &r,
            &["input"],
            &|t| mtanet_kernels::channel_max_mean(&t[0]),
            Some(&|t| {
                let ch = t[0].dim(1)?;
                let tilt = (Tensor::arange(0f32, ch as f32, t[0].device())? * 1e-6)?
                    .reshape((1, ch, 1, 1))?;
                let max = t[0].broadcast_sub(&tilt)?.max_keepdim(1)?;
                Tensor::cat(&[max, t[0].mean_keepdim(1)?], 1)
            }),
        );
    }

    // Residual join (AddRelu forward, ReluMask backward): odd size and a strided operand.
    let mut data = None;
    c.guard(
        "AddRelu op (3, 7, 5, 3), b transposed",
        "[3, 7, 5, 3] x [3, 7, 3, 5]",
        |_| {
            data = Some([
                cpu_randn(1400, &[3, 7, 5, 3], 1.0)?,
                cpu_randn(1401, &[3, 7, 3, 5], 1.0)?,
                cpu_randn(1402, &[3, 7, 5, 3], 1.0)?,
            ]);
            Ok(())
        },
    );
    if let Some([a, b, r]) = data {
        c.op_with(
            "AddRelu op (3, 7, 5, 3), b transposed",
            &[a, b],
            &r,
            &["a", "b"],
            &|t| mtanet_kernels::add_relu(&t[0], &t[1].transpose(2, 3)?),
            Some(&|t| (&t[0] + t[1].transpose(2, 3)?)?.relu()),
        );
    }
}

/// Hyper-parameters of the optimizer rows: lr, momentum / betas, eps, weight decay, scale.
const SGD: (f64, f64, f64, f64) = (0.1, 0.9, 1e-4, 0.5);
const ADAM: (f64, [f64; 2], f64, f64, f64) = (1e-2, [0.9, 0.999], 1e-8, 1e-4, 0.5);

/// Two optimizer steps from `p0` with `grads` on `dev`: our in-place kernels (`ours`) or the
/// same formulas from candle's tensor ops. Returns the parameter and the state buffers.
fn optimizer_run(
    dev: &Device,
    adam: bool,
    ours: bool,
    p0: &Tensor,
    grads: &[Tensor],
) -> anyhow::Result<Vec<Tensor>> {
    // `copy` gives each run its own storage (the updates are in place).
    let mut p = p0.to_device(dev)?.copy()?;
    let mut m = p.zeros_like()?;
    let mut v = p.zeros_like()?;
    for (step, g) in grads.iter().enumerate() {
        let g = g.to_device(dev)?;
        let t = step as i32 + 1;
        match (adam, ours) {
            (true, true) => {
                let (lr, betas, eps, wd, scale) = ADAM;
                mtanet_kernels::adam_step(&p, &m, &v, &g, lr, betas, eps, wd, scale, t)?;
            }
            (false, true) => {
                let (lr, momentum, wd, scale) = SGD;
                mtanet_kernels::sgd_momentum_step(&p, &m, &g, lr, momentum, wd, scale)?;
            }
            (true, false) => {
                let (lr, [b1, b2], eps, wd, scale) = ADAM;
                let d = ((&g * scale)? + (&p * wd)?)?;
                m = ((&m * b1)? + (&d * (1.0 - b1))?)?;
                v = ((&v * b2)? + (d.sqr()? * (1.0 - b2))?)?;
                let step_size = lr / (1.0 - b1.powi(t));
                let sqrt_bc2 = (1.0 - b2.powi(t)).sqrt();
                let denom = ((v.sqrt()? / sqrt_bc2)? + eps)?;
                p = (&p - ((&m / denom)? * step_size)?)?;
            }
            (false, false) => {
                let (lr, momentum, wd, scale) = SGD;
                let d = ((&g * scale)? + (&p * wd)?)?;
                m = ((&m * momentum)? + d)?;
                p = (&p - (&m * lr)?)?;
            }
        }
    }
    Ok(vec![p, m, v])
}

/// The in-place optimizer updates (SGD with momentum, Adam): two steps on both devices from
/// the same start; the parameter and every state buffer compared (in the CPU mode with the
/// same formulas written with candle's tensor ops).
pub(super) fn check_optimizer_steps(c: &mut Checker) {
    for (label, adam, names) in [
        (
            "sgd_momentum_step() (3, 37)",
            false,
            &["param", "momentum"][..],
        ),
        ("adam_step() (3, 37)", true, &["param", "m", "v"][..]),
    ] {
        c.guard(label, "[3, 37]", |c| {
            c.injected(label)?;
            let p0 = cpu_randn(1500, &[3, 37], 1.0)?;
            let grads = [
                cpu_randn(1501, &[3, 37], 1.0)?,
                cpu_randn(1502, &[3, 37], 1.0)?,
            ];
            let independent = c.independent;
            let what = if independent {
                format!("{}, candle ops", device_name(&c.reference))
            } else {
                device_name(&c.reference)
            };
            let want = optimizer_run(&c.reference.clone(), adam, !independent, &p0, &grads)?;
            let got = optimizer_run(&c.dev.clone(), adam, true, &p0, &grads)?;
            let tol = c.tolerance;
            for ((name, a), b) in names.iter().zip(&got).zip(&want) {
                c.push_row(
                    tol,
                    label,
                    &format!("{name} after 2 steps"),
                    (a, b, &what),
                    None,
                )?;
            }
            Ok(())
        });
    }
}

/// The optimizer's gradient norm ([`crate::step::Optimizer::grad_norm_sq`]: on CUDA one device
/// reduction over every gradient, f64, not read back) on four gradients of backbone-like
/// shapes, against, in the CPU mode, `sqrt(sum g^2)` in f64 from candle's ops.
pub(super) fn check_grad_norm(c: &mut Checker) {
    const ITEM: &str = "Optimizer::grad_norm_sq (4 gradients)";
    let dims: [&[usize]; 4] = [&[16, 3, 7, 7], &[37], &[64, 16, 1, 1], &[5, 11]];
    c.guard(ITEM, &format!("{dims:?}"), |c| {
        c.injected(ITEM)?;
        // The gradient of sum(w * r) with respect to w is r.
        let rs = dims
            .iter()
            .enumerate()
            .map(|(i, d)| cpu_randn(1600 + i as u64, d, 1.0 + i as f64))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ours = |dev: &Device| -> anyhow::Result<Tensor> {
            let mut ps = Vec::new();
            let mut loss = Tensor::zeros((), candle_core::DType::F32, dev)?;
            for (i, r) in rs.iter().enumerate() {
                let var = Var::from_tensor(&r.zeros_like()?.to_device(dev)?)?;
                loss = (loss + (var.as_tensor() * r.to_device(dev)?)?.sum_all()?)?;
                ps.push(crate::step::optim::Param {
                    name: format!("p{i}"),
                    var,
                    decay: false,
                });
            }
            let opt = crate::step::Optimizer::new(&Default::default(), ps);
            Ok(opt.grad_norm_sq(&loss.backward()?)?.sqrt()?.reshape(1)?)
        };
        let independent = c.independent;
        let (want, what) = if independent {
            let mut total = Tensor::zeros((), candle_core::DType::F64, &Device::Cpu)?;
            for r in &rs {
                total = (total + r.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?)?;
            }
            let what = format!("{}, candle ops", device_name(&c.reference));
            (total.sqrt()?.reshape(1)?, what)
        } else {
            (ours(&c.reference.clone())?, device_name(&c.reference))
        };
        let got = ours(&c.dev.clone())?;
        let tol = c.tolerance;
        c.push_row(tol, ITEM, "global L2 norm", (&got, &want, &what), None)
    });
}
