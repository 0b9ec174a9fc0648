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

use super::fused_ops::{check_fused_ops, check_grad_norm, check_optimizer_steps};
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
    check_grad_norm(c);
}

/// The tensors of a fixture file, on the CPU.
fn load_fixture(path: &Path) -> anyhow::Result<std::collections::HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("cannot read {}", path.display()))
}

/// `conv2d()` on the PyTorch convolution fixtures (`tests/fixtures/kernels`): output and both
/// gradients against the reference device and against PyTorch (1e-4 / 1e-3, as
/// `crates/kernels/tests/conv2d_vs_torch.rs`).
fn check_conv_fixtures(c: &mut Checker, path: &Path) {
    let Some(f) = c.guard_load("conv2d() PyTorch fixtures", path, || load_fixture(path)) else {
        return;
    };
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
    let Some(f) = c.guard_load("MaxPool2d PyTorch fixtures", path, || load_fixture(path)) else {
        return;
    };
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
