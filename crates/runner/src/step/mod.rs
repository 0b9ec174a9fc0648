//! One training step and one eval step, with the optimizer and the learning-rate schedule
//! they use. Training, `bench` and `gpu-check` call these; none has a copy.

pub mod eval_step;
pub mod lr_schedule;
pub mod optim;
pub mod train_step;

pub use eval_step::{eval_step, evaluate, report_of, scoring_for, EvalPass, HostOutputs};
pub use optim::Optimizer;
pub use train_step::{batch_targets, forward_loss, train_step, Objective, StepGuard, StepOutcome};
