//! Adam and SGD with momentum, with PyTorch's semantics and a state that checkpoints.
//!
//! candle-nn's `SGD` has no momentum and its `AdamW` decouples weight decay and keeps its
//! moments private (so a run could not resume exactly). The paper trained with PyTorch's
//! `Adam(weight_decay=1e-3)` (L2 added to the gradient) and `SGD(weight_decay=5e-3)`; these
//! follow `torch.optim.Adam` / `torch.optim.SGD` step for step.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Result, Tensor, Var};

use crate::experiment::{OptimizerKind, StageConfig};

/// One trainable variable with its state-dict name.
#[derive(Clone)]
pub struct Param {
    /// State-dict name (`backbone.layer1.0.conv1.weight`).
    pub name: String,
    /// The variable.
    pub var: Var,
    /// Whether weight decay applies to it.
    pub decay: bool,
}

/// Which variables train and which get weight decay.
///
/// BatchNorm running statistics never train. With `decay_norm_and_bias: false`, biases,
/// BatchNorm affine parameters and the uncertainty log-variances get no weight decay; the
/// log-variances never get it in any case (decay would bias the task weights toward 1).
pub fn params(vars: &HashMap<String, Var>, decay_norm_and_bias: bool) -> Vec<Param> {
    let mut names: Vec<&String> = vars
        .keys()
        .filter(|n| !n.ends_with("running_mean") && !n.ends_with("running_var"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let is_norm_or_bias = n.ends_with(".bias") || vars[n].rank() <= 1;
            let decay = !n.starts_with("uncertainty") && (decay_norm_and_bias || !is_norm_or_bias);
            Param {
                name: n.clone(),
                var: vars[n].clone(),
                decay,
            }
        })
        .collect()
}

/// Adam or SGD over a fixed list of parameters.
pub struct Optimizer {
    kind: OptimizerKind,
    params: Vec<Param>,
    lr: f64,
    weight_decay: f64,
    momentum: f64,
    betas: [f64; 2],
    eps: f64,
    step: u64,
    /// Adam first moments / SGD momentum buffers, by parameter name.
    m: HashMap<String, Tensor>,
    /// Adam second moments.
    v: HashMap<String, Tensor>,
}

impl Optimizer {
    /// Builds the stage's optimizer.
    pub fn new(stage: &StageConfig, params: Vec<Param>) -> Self {
        Self {
            kind: stage.optimizer,
            params,
            lr: stage.lr,
            weight_decay: stage.weight_decay,
            momentum: stage.momentum,
            betas: stage.betas,
            eps: 1e-8,
            step: 0,
            m: HashMap::new(),
            v: HashMap::new(),
        }
    }

    /// Sets the learning rate (schedules call this before each step).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// The parameters.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Global L2 norm of the gradients present (as PyTorch's `clip_grad_norm_` computes it):
    /// the square root of [`Optimizer::grad_norm_sq`], read to the host.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        Ok(self.grad_norm_sq(grads)?.to_scalar::<f64>()?.sqrt())
    }

    /// The squared global L2 norm of the gradients present, as an f64 scalar tensor on their
    /// device, not read back.
    ///
    /// On the CPU each gradient's `sum(g^2)` (f32) is added in f64 in parameter order, on the
    /// host (no transfer). On CUDA with the fused ops (f32 gradients) it is one device
    /// reduction over all of them (`mtanet_kernels::cuda::elementwise::sum_squares`: f64
    /// accumulation, deterministic); otherwise candle's ops on the device, added in f64 there.
    /// No gradient present: 0 (on the CPU).
    pub fn grad_norm_sq(&self, grads: &GradStore) -> Result<Tensor> {
        let present: Vec<&Tensor> = self
            .params
            .iter()
            .filter_map(|p| grads.get(&p.var))
            .collect();
        let Some(first) = present.first() else {
            return Tensor::new(0f64, &candle_core::Device::Cpu);
        };
        if first.device().is_cpu() && present.iter().all(|g| g.device().is_cpu()) {
            let mut total = 0f64;
            for g in &present {
                total += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
            }
            return Tensor::new(total, &candle_core::Device::Cpu);
        }
        #[cfg(feature = "cuda")]
        if first.device().is_cuda() && mtanet_kernels::fused_ops_apply(&present) {
            return mtanet_kernels::cuda::elementwise::sum_squares(&present);
        }
        let mut total = Tensor::zeros((), DType::F64, first.device())?;
        for g in &present {
            let s = g.sqr()?.sum_all()?.to_dtype(DType::F64)?;
            total = (total + s.to_device(first.device())?)?;
        }
        Ok(total)
    }

    /// One update; `scale` multiplies every gradient first (gradient clipping).
    pub fn step(&mut self, grads: &GradStore, scale: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        // The list is moved out while the updates borrow `self` mutably, and always put back.
        let params = std::mem::take(&mut self.params);
        let result = params.iter().try_for_each(|p| match grads.get(&p.var) {
            Some(g) => self.update(p, g, scale, t),
            None => Ok(()),
        });
        self.params = params;
        result
    }

    /// One parameter's update: in place on CPU f32, else with tensor ops (same rule).
    fn update(&mut self, p: &Param, g: &Tensor, scale: f64, t: i32) -> Result<()> {
        let w = p.var.as_tensor();
        if mtanet_kernels::fused_update_applies(w, &[g]) {
            return self.fused_step(p, g, scale, t);
        }
        let mut g = if scale != 1.0 {
            (g * scale)?
        } else {
            g.clone()
        };
        if p.decay && self.weight_decay != 0.0 {
            g = (g + (w * self.weight_decay)?)?;
        }
        match self.kind {
            OptimizerKind::Sgd => {
                let d = if self.momentum != 0.0 {
                    let buf = match self.m.get(&p.name) {
                        Some(b) => ((b * self.momentum)? + &g)?,
                        None => g.clone(),
                    };
                    self.m.insert(p.name.clone(), buf.clone());
                    buf
                } else {
                    g
                };
                p.var.set(&(w - (d * self.lr)?)?)?;
            }
            OptimizerKind::Adam => {
                let [b1, b2] = self.betas;
                let m = match self.m.get(&p.name) {
                    Some(m) => ((m * b1)? + (&g * (1.0 - b1))?)?,
                    None => (&g * (1.0 - b1))?,
                };
                let v = match self.v.get(&p.name) {
                    Some(v) => ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                    None => (g.sqr()? * (1.0 - b2))?,
                };
                let bc1 = 1.0 - b1.powi(t);
                let bc2 = 1.0 - b2.powi(t);
                let denom = ((v.sqrt()? / bc2.sqrt())? + self.eps)?;
                let update = ((&m / denom)? * (self.lr / bc1))?;
                p.var.set(&(w - update)?)?;
                self.m.insert(p.name.clone(), m);
                self.v.insert(p.name.clone(), v);
            }
        }
        Ok(())
    }

    /// One parameter's update on CPU f32, in place (`mtanet_kernels::optimizer_step`): the same
    /// rule as the tensor-op path, without its full-size temporaries.
    fn fused_step(&mut self, p: &Param, g: &Tensor, scale: f64, t: i32) -> Result<()> {
        let w = p.var.as_tensor();
        let decay = if p.decay { self.weight_decay } else { 0.0 };
        let zeros = || w.zeros_like();
        match self.kind {
            OptimizerKind::Sgd => {
                if !self.m.contains_key(&p.name) {
                    self.m.insert(p.name.clone(), zeros()?);
                }
                let buf = &self.m[&p.name];
                mtanet_kernels::sgd_momentum_step(w, buf, g, self.lr, self.momentum, decay, scale)
            }
            OptimizerKind::Adam => {
                for state in [&mut self.m, &mut self.v] {
                    if !state.contains_key(&p.name) {
                        state.insert(p.name.clone(), zeros()?);
                    }
                }
                let (m, v) = (&self.m[&p.name], &self.v[&p.name]);
                mtanet_kernels::adam_step(
                    w, m, v, g, self.lr, self.betas, self.eps, decay, scale, t,
                )
            }
        }
    }

    /// The state as named tensors (`m.<param>`, `v.<param>`) and the step count.
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut out = HashMap::new();
        for (k, t) in &self.m {
            out.insert(format!("m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            out.insert(format!("v.{k}"), t.clone());
        }
        (out, self.step)
    }

    /// Restores a state written by [`Optimizer::state`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) {
        self.step = step;
        self.m.clear();
        self.v.clear();
        for (k, t) in tensors {
            if let Some(n) = k.strip_prefix("m.") {
                self.m.insert(n.to_string(), t.clone());
            } else if let Some(n) = k.strip_prefix("v.") {
                self.v.insert(n.to_string(), t.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn stage(kind: OptimizerKind) -> StageConfig {
        StageConfig {
            optimizer: kind,
            lr: 0.1,
            weight_decay: 0.01,
            ..Default::default()
        }
    }

    /// Minimises (w - 3)^2 and checks the hand-derivable first steps of each rule.
    #[test]
    fn first_steps_follow_pytorch_rules() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
            let w = Var::new(&[1.0f32], &Device::Cpu).unwrap();
            let p = vec![Param {
                name: "w".into(),
                var: w.clone(),
                decay: true,
            }];
            let mut opt = Optimizer::new(&stage(kind), p);
            let loss = (w.as_tensor() - 3.0)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads, 1.0).unwrap();
            let got = w.as_tensor().to_vec1::<f32>().unwrap()[0];
            // g = 2(w-3) + wd*w = -4 + 0.01 = -3.99
            let expected = match kind {
                OptimizerKind::Sgd => 1.0 + 0.1 * 3.99,
                // Adam's first step moves by lr * sign(g) (m_hat/sqrt(v_hat) = +-1).
                OptimizerKind::Adam => 1.0 + 0.1,
            };
            assert!(
                (got - expected).abs() < 1e-5,
                "{kind:?}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn converges_and_state_round_trips() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
            let run = |split: Option<usize>| {
                let w = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
                let mk = |w: &Var| {
                    Optimizer::new(
                        &stage(kind),
                        vec![Param {
                            name: "w".into(),
                            var: w.clone(),
                            decay: false,
                        }],
                    )
                };
                let mut opt = mk(&w);
                for i in 0..200 {
                    if Some(i) == split {
                        let (st, n) = opt.state();
                        opt = mk(&w);
                        opt.load_state(&st, n);
                    }
                    let loss = (w.as_tensor() - 3.0)
                        .unwrap()
                        .sqr()
                        .unwrap()
                        .sum_all()
                        .unwrap();
                    opt.step(&loss.backward().unwrap(), 1.0).unwrap();
                }
                w.as_tensor().to_vec1::<f32>().unwrap()
            };
            let a = run(None);
            assert!(a.iter().all(|x| (x - 3.0).abs() < 0.05), "{kind:?} {a:?}");
            assert_eq!(a, run(Some(77)));
        }
    }

    #[test]
    fn decay_groups() {
        let m = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&m, candle_core::DType::F32, &Device::Cpu);
        vb.get((2, 2), "a.weight").unwrap();
        vb.get(2, "a.bias").unwrap();
        vb.get(2, "bn.running_mean").unwrap();
        vb.get(1, "uncertainty.log_var_va").unwrap();
        let data = m.data().lock().unwrap().clone();
        let ps = params(&data, false);
        let names: Vec<_> = ps.iter().map(|p| (p.name.as_str(), p.decay)).collect();
        assert_eq!(
            names,
            vec![
                ("a.bias", false),
                ("a.weight", true),
                ("uncertainty.log_var_va", false)
            ]
        );
        assert!(
            params(&data, true)
                .iter()
                .find(|p| p.name == "a.bias")
                .unwrap()
                .decay
        );
    }
}
