//! Conformance of every op of `mtanet-kernels`: the custom ops called directly (so their
//! `cuda_fwd` runs) and the public functions as the backbones call them, forward and every
//! input gradient. Each check is guarded ([`Checker::guard`]): an op that errors becomes an
//! error row and the next check runs.
//!
//! In the CPU mode (device under test = reference device) every op with an independent
//! formulation is compared with it instead of with itself: candle's own convolution, candle's
//! composed BatchNorm / affine / gate / pooling / residual / optimizer formulas, a max-pool
//! built from slices and candle's `max`; and the convolutions and max-pools also against the
//! committed PyTorch fixtures. So the CPU mode checks numbers, not only the pipeline.

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
pub(super) fn check_ops(c: &mut Checker, fixtures: &Path) {
    for (i, &(name, xd, wd, stride, padding, groups)) in CONV_CASES.iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let item = format!("Conv2d {name}");
        let mut data = None;
        c.guard(&item, &format!("{xd:?} x {wd:?}"), |_| {
            let x = cpu_randn(seed, &xd, 1.0)?;
            let w = cpu_randn(seed + 1, &wd, 0.2)?;
            let g = mtanet_kernels::ConvGeometry::new(&xd, &wd, stride, padding, groups)?;
            let (n, co, oh, ow) = g.output_dims();
            data = Some((x, w, cpu_randn(seed + 2, &[n, co, oh, ow], 1.0)?));
            Ok(())
        });
        let Some((x, w, r)) = data else { continue };
        let op = Conv2d {
            stride,
            padding,
            groups,
        };
        let candle_conv = |t: &[Tensor]| t[0].conv2d(&t[1], padding, stride, 1, groups);
        c.op_with(
            &format!("Conv2d op {name}"),
            &[x.clone(), w.clone()],
            &r,
            &["input", "weight"],
            &|t| t[0].apply_op2(&t[1], op),
            Some(&candle_conv),
        );
        c.op_with(
            &format!("conv2d() {name}"),
            &[x, w],
            &r,
            &["input", "weight"],
            &|t| mtanet_kernels::conv2d(&t[0], &t[1], stride, padding, groups),
            Some(&candle_conv),
        );
    }
    check_conv_fixtures(c, &fixtures.join("../kernels/conv2d_torch.safetensors"));
    check_max_pool_fixtures(c, &fixtures.join("maxpool.safetensors"));
    // A stem-sized random max-pool at batch 4 (no ties), both modes.
    for (ceil, padding) in [(false, 1), (true, 0)] {
        let pool = MaxPool2d {
            kernel: 3,
            stride: 2,
            padding,
            ceil_mode: ceil,
        };
        let item = format!("MaxPool2d op 3x3/2 p{padding} ceil={ceil} (batch 4)");
        let mut data = None;
        c.guard(&item, "[4, 16, 28, 28]", |_| {
            let x = cpu_randn(900 + padding as u64, &[4, 16, 28, 28], 1.0)?;
            let g = mtanet_kernels::PoolGeometry::new(x.dims(), 3, 2, padding, ceil)?;
            let r = cpu_randn(950, &[4, 16, g.rows.output, g.cols.output], 1.0)?;
            data = Some((x, r));
            Ok(())
        });
        let Some((x, r)) = data else { continue };
        c.op_with(
            &item,
            &[x],
            &r,
            &["input"],
            &|t| t[0].apply_op1(pool),
            Some(&|t| max_pool_by_slices(&t[0], pool)),
        );
    }
    // Residual add + ReLU.
    let mut data = None;
    c.guard("add_relu()", "[2, 8, 5, 5]", |_| {
        data = Some([
            cpu_randn(1000, &[2, 8, 5, 5], 1.0)?,
            cpu_randn(1001, &[2, 8, 5, 5], 1.0)?,
            cpu_randn(1002, &[2, 8, 5, 5], 1.0)?,
        ]);
        Ok(())
    });
    if let Some([a, b, r]) = data {
        c.op_with(
            "add_relu()",
            &[a, b],
            &r,
            &["a", "b"],
            &|t| mtanet_kernels::add_relu(&t[0], &t[1]),
            Some(&|t| (&t[0] + &t[1])?.relu()),
        );
    }
    check_fused_ops(c);
    check_optimizer_steps(c);
}

/// `conv2d()` on the PyTorch convolution fixtures (`tests/fixtures/kernels`): output and both
/// gradients against the reference device and against PyTorch (1e-4 / 1e-3, as
/// `crates/kernels/tests/conv2d_vs_torch.rs`).
fn check_conv_fixtures(c: &mut Checker, path: &Path) {
    let mut tensors = None;
    c.guard(
        "conv2d() PyTorch fixtures",
        &path.display().to_string(),
        |_| {
            tensors = Some(
                candle_core::safetensors::load(path, &Device::Cpu)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            );
            Ok(())
        },
    );
    let Some(f) = tensors else { return };
    let mut case = 0;
    while f.contains_key(&format!("case{case}.x")) {
        let key = |name: &str| format!("case{case}.{name}");
        let item = format!("conv2d() PyTorch case{case}");
        let shape = format!(
            "{:?} x {:?}",
            f[&key("x")].dims(),
            f.get(&key("w"))
                .map(|w| w.dims().to_vec())
                .unwrap_or_default()
        );
        c.guard(&item, &shape, |c| {
            c.injected(&item)?;
            let get = |name: &str| {
                f.get(&key(name))
                    .with_context(|| format!("no {}", key(name)))
            };
            let p = get("params")?.to_vec1::<i64>()?;
            let &[stride, padding, groups] = p.as_slice() else {
                anyhow::bail!("params must hold [stride, padding, groups], got {p:?}")
            };
            let (s, pad, g) = (stride as usize, padding as usize, groups as usize);
            let run = |t: &[Tensor]| mtanet_kernels::conv2d(&t[0], &t[1], s, pad, g);
            let inputs = [get("x")?.clone(), get("w")?.clone()];
            let r = get("r")?;
            let (y_ref, g_ref) = value_and_grads(&inputs, r, &c.reference.clone(), &run)?;
            let (y, gr) = value_and_grads(&inputs, r, &c.dev.clone(), &run)?;
            c.push(&item, "output", &y, &y_ref, Some((get("y")?, 1e-4)))?;
            c.push(
                &item,
                "grad input",
                &gr[0],
                &g_ref[0],
                Some((get("gx")?, 1e-3)),
            )?;
            c.push(
                &item,
                "grad weight",
                &gr[1],
                &g_ref[1],
                Some((get("gw")?, 1e-3)),
            )
        });
        case += 1;
    }
}

/// Max-pool on the PyTorch fixtures (ties, ceil-mode edges, padding), op and public function.
fn check_max_pool_fixtures(c: &mut Checker, path: &Path) {
    let mut tensors = None;
    c.guard(
        "MaxPool2d PyTorch fixtures",
        &path.display().to_string(),
        |_| {
            tensors = Some(
                candle_core::safetensors::load(path, &Device::Cpu)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            );
            Ok(())
        },
    );
    let Some(f) = tensors else { return };
    let mut cases: Vec<&str> = f.keys().filter_map(|k| k.strip_suffix(".params")).collect();
    cases.sort();
    for case in cases {
        for (label, public) in [("MaxPool2d op", false), ("max_pool2d()", true)] {
            let x = f.get(&format!("{case}.input"));
            let shape = x.map_or(String::new(), |x| format!("{:?}", x.dims()));
            let item = format!(
                "{label} {case} (batch {})",
                x.and_then(|x| x.dim(0).ok()).unwrap_or(0)
            );
            c.guard(&item, &shape, |c| {
                c.injected(&item)?;
                let get = |name: &str| {
                    f.get(&format!("{case}.{name}"))
                        .with_context(|| format!("no {case}.{name}"))
                };
                let p = get("params")?.to_vec1::<i64>()?;
                anyhow::ensure!(p.len() == 4, "{case}.params: 4 values expected, got {p:?}");
                let pool = MaxPool2d {
                    kernel: p[0] as usize,
                    stride: p[1] as usize,
                    padding: p[2] as usize,
                    ceil_mode: p[3] != 0,
                };
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
                let (x, gy) = (get("input")?, get("grad_output")?);
                let (y_ref, g_ref) =
                    value_and_grads(std::slice::from_ref(x), gy, &c.reference.clone(), &run)?;
                let (y, g) = value_and_grads(std::slice::from_ref(x), gy, &c.dev.clone(), &run)?;
                c.push(&item, "output", &y, &y_ref, Some((get("output")?, 0.0)))?;
                c.push(
                    &item,
                    "grad input",
                    &g[0],
                    &g_ref[0],
                    Some((get("grad_input")?, 1e-6)),
                )
            });
        }
    }
}

/// Max-pool from candle's own ops, for inputs without ties: the input padded with -inf to
/// `2 * out + 2` rows and columns (stride 2), the kernel's nine offsets taken as strided
/// slices (narrow, reshape, take every second row and column), stacked, and reduced with
/// `max` (whose gradient goes to the maximum). Stride 2 and kernel 3 only.
fn max_pool_by_slices(x: &Tensor, pool: MaxPool2d) -> candle_core::Result<Tensor> {
    let (n, ch, h, w) = x.dims4()?;
    if pool.kernel != 3 || pool.stride != 2 {
        candle_core::bail!("max_pool_by_slices: kernel 3, stride 2 only")
    }
    let g = mtanet_kernels::PoolGeometry::new(x.dims(), 3, 2, pool.padding, pool.ceil_mode)?;
    let (oh, ow) = (g.rows.output, g.cols.output);
    let (hp, wp) = (2 * oh + 2, 2 * ow + 2);
    let p = pool.padding;
    let neg =
        |rows: usize, cols: usize| Tensor::full(f32::NEG_INFINITY, (n, ch, rows, cols), x.device());
    // Rows: p on top, the rest below; then the same for the columns.
    let x = Tensor::cat(&[&neg(p, w)?, x, &neg(hp - h - p, w)?], 2)?;
    let x = Tensor::cat(&[&neg(hp, p)?, &x, &neg(hp, wp - w - p)?], 3)?;
    let mut taps = Vec::with_capacity(9);
    for ki in 0..3 {
        let rows = x.narrow(2, ki, 2 * oh)?.reshape((n, ch, oh, 2, wp))?;
        let rows = rows.narrow(3, 0, 1)?.squeeze(3)?;
        for kj in 0..3 {
            let t = rows.narrow(3, kj, 2 * ow)?.reshape((n, ch, oh, ow, 2))?;
            taps.push(t.narrow(4, 0, 1)?.squeeze(4)?);
        }
    }
    Tensor::stack(&taps, 0)?.max(0)
}

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
                    let (_, s) =
                        mtanet_kernels::batch_norm_train(&xd, &on(&w)?, &on(&b)?, 1e-5, relu)?;
                    Ok([
                        Tensor::new(s.mean.as_slice(), &Device::Cpu)?,
                        Tensor::new(s.var.as_slice(), &Device::Cpu)?,
                    ])
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
