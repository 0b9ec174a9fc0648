//! The checks of values that the types allow but training does not, with the key at fault.

use super::{Config, ConfigError, Criterion, Schedule, StageInit};

impl Config {
    /// Checks values that the types allow but training does not.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let bad = |key: String, message: String| {
            Err(ConfigError::Invalid {
                path: path.to_string(),
                key,
                message,
            })
        };
        if self.training.stages.is_empty() {
            return bad(
                "training.stages".into(),
                "at least one stage is required (e.g. `- {optimizer: adam, lr: 0.001, epochs: 1}`)"
                    .into(),
            );
        }
        for (i, s) in self.training.stages.iter().enumerate() {
            let k = |f: &str| format!("training.stages[{i}].{f}");
            if !(s.lr.is_finite() && s.lr > 0.0) {
                return bad(k("lr"), format!("must be a positive number, got {}", s.lr));
            }
            if !(s.weight_decay.is_finite() && s.weight_decay >= 0.0) {
                return bad(
                    k("weight_decay"),
                    format!("must be >= 0, got {}", s.weight_decay),
                );
            }
            if !(0.0..1.0).contains(&s.momentum) {
                return bad(
                    k("momentum"),
                    format!("must be in [0, 1), got {}", s.momentum),
                );
            }
            if s.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
                return bad(k("betas"), format!("must be in [0, 1), got {:?}", s.betas));
            }
            if s.steps == Some(0) || (s.steps.is_none() && s.epochs == 0) {
                return bad(
                    k("epochs"),
                    "a stage needs epochs >= 1 or steps >= 1".into(),
                );
            }
            match s.schedule {
                Schedule::Step { every: 0, .. } => {
                    return bad(k("schedule.every"), "must be >= 1".into());
                }
                Schedule::Step { gamma, .. } if !(gamma.is_finite() && gamma > 0.0) => {
                    return bad(
                        k("schedule.gamma"),
                        format!("must be a positive number, got {gamma}"),
                    );
                }
                Schedule::Cosine { min_factor } if !(0.0..=1.0).contains(&min_factor) => {
                    return bad(
                        k("schedule.min_factor"),
                        format!("must be in [0, 1], got {min_factor}"),
                    );
                }
                _ => {}
            }
        }
        if self.data.require_real && self.data.root.is_none() {
            return Err(ConfigError::NeedsRealData {
                path: path.to_string(),
            });
        }
        for (i, s) in self.training.stages.iter().enumerate() {
            if s.init == StageInit::Best {
                let key = format!("training.stages[{i}].init");
                if i == 0 {
                    return bad(
                        key,
                        "the first stage has no previous best; use `last`".into(),
                    );
                }
                if self.selection.criterion == Criterion::Last {
                    return bad(
                        key,
                        "`best` needs `selection.criterion: total` or `per_task`".into(),
                    );
                }
            }
        }
        if !(1..=8).contains(&self.model.head.decoder_layers) {
            return bad(
                "model.head.decoder_layers".into(),
                format!("must be 1 to 8, got {}", self.model.head.decoder_layers),
            );
        }
        if self.eval.every_epochs == 0 {
            return bad("eval.every_epochs".into(), "must be >= 1".into());
        }
        if self.data.batch_size == 0 {
            return bad("data.batch_size".into(), "must be >= 1".into());
        }
        if self.eval.batch_size == 0 {
            return bad("eval.batch_size".into(), "must be >= 1".into());
        }
        if self.data.image_size < 32 {
            return bad(
                "data.image_size".into(),
                format!("must be >= 32, got {}", self.data.image_size),
            );
        }
        if self.model.width_div == 0 || 64 % self.model.width_div != 0 {
            return bad(
                "model.width_div".into(),
                format!("must divide 64, got {}", self.model.width_div),
            );
        }
        if self.model.groups == Some(0) {
            return bad("model.groups".into(), "must be >= 1".into());
        }
        if let Some(d) = self.model.depths {
            if d.contains(&0) {
                return bad("model.depths".into(), "every stage needs >= 1 block".into());
            }
        }
        if !(0.0..1.0).contains(&self.model.head.dropout) {
            return bad(
                "model.head.dropout".into(),
                format!("must be in [0, 1), got {}", self.model.head.dropout),
            );
        }
        if !matches!(self.model.head.va_activation.as_str(), "tanh" | "none") {
            return bad(
                "model.head.va_activation".into(),
                format!("`tanh` or `none`, got `{}`", self.model.head.va_activation),
            );
        }
        if let Some(c) = self.training.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return bad("training.grad_clip".into(), format!("must be > 0, got {c}"));
            }
        }
        crate::build::device::parse_device(&self.device).map_err(|message| {
            ConfigError::Invalid {
                path: path.to_string(),
                key: "device".into(),
                message,
            }
        })?;
        Ok(())
    }

    /// The configuration as YAML (written beside every run).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }
}
