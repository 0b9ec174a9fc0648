//! Our Adam and SGD against `torch.optim` trajectories (tests/fixtures/optim, made by
//! scripts/reference/make_optim_fixtures.py): six steps under given gradients, through the
//! fused in-place CPU f32 path and through the tensor-op path (f64 parameters).

use candle_core::{DType, Device, Tensor, Var};
use mtanet_runner::experiment::{OptimizerKind, StageConfig};
use mtanet_runner::step::optim::{Optimizer, Param};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn run(kind: OptimizerKind, dtype: DType) -> f64 {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/optim/trajectories.json"
    );
    let data: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    let key = match kind {
        OptimizerKind::Sgd => "sgd",
        OptimizerKind::Adam => "adam",
    };
    let h = &data[key]["hparams"];
    let stage = StageConfig {
        optimizer: kind,
        lr: h["lr"].as_f64().expect("lr"),
        momentum: h["momentum"].as_f64().unwrap_or(0.0),
        betas: {
            let b = if h["betas"].is_null() {
                vec![0.9, 0.999]
            } else {
                floats(&h["betas"])
            };
            [b[0], b[1]]
        },
        weight_decay: h["weight_decay"].as_f64().expect("weight_decay"),
        ..StageConfig::default()
    };
    let dev = Device::Cpu;
    let init = floats(&data["init"]);
    let w = Var::from_tensor(
        &Tensor::new(init.as_slice(), &dev)
            .and_then(|t| t.to_dtype(dtype))
            .expect("init"),
    )
    .expect("var");
    let mut opt = Optimizer::new(
        &stage,
        vec![Param {
            name: "w".into(),
            var: w.clone(),
            decay: true,
        }],
    );
    let mut worst = 0f64;
    for (g, after) in data["grads"]
        .as_array()
        .expect("grads")
        .iter()
        .zip(data[key]["after"].as_array().expect("after"))
    {
        let g = Tensor::new(floats(g).as_slice(), &dev)
            .and_then(|t| t.to_dtype(dtype))
            .expect("grad");
        let grads = (w.as_tensor() * &g)
            .and_then(|t| t.sum_all())
            .and_then(|l| l.backward())
            .expect("backward");
        opt.step(&grads, 1.0).expect("step");
        let got = w
            .as_tensor()
            .to_dtype(DType::F64)
            .and_then(|t| t.to_vec1::<f64>())
            .expect("values");
        for (a, e) in got.iter().zip(floats(after)) {
            worst = worst.max((a - e).abs() / e.abs().max(1e-3));
        }
    }
    worst
}

#[test]
fn sgd_and_adam_follow_torch_optim() {
    for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
        for dtype in [DType::F32, DType::F64] {
            let err = run(kind, dtype);
            assert!(err < 2e-6, "{kind:?} {dtype:?}: max relative error {err}");
        }
    }
}
