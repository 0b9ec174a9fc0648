//! Parameter initialisation as the reference implementations do it, as candle `Init` hints.
//!
//! torchvision/timm `ResNet.__init__`: `kaiming_normal_(mode='fan_out', nonlinearity='relu')` for
//! convs, BN weight 1 / bias 0. PyTorch's default for `nn.Linear` and conv biases
//! (`kaiming_uniform_(a=sqrt(5))`) is `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`. CBAM
//! (Jongchan/attention-module `model_resnet.py`) sets every bias to 0 and the spatial gate's BN
//! weight to 0. The hints take effect with `VarBuilder::from_varmap`; other backends ignore them.

use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::Init;

/// Kaiming normal, fan-out, ReLU gain: `N(0, 2 / (c_out * k * k))`.
pub(crate) const CONV_WEIGHT: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};

/// PyTorch's default for `nn.Linear` weights/biases and conv biases: `U(-b, b)`, `b = 1/sqrt(fan_in)`.
pub(crate) fn pytorch_default(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

#[cfg(test)]
mod tests {
    use crate::{BackboneKind, MtaNet, MtaNetConfig, ResNetConfig};
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    fn stats(t: &Tensor) -> candle_core::Result<(f64, f64, f64, f64)> {
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        Ok((mean, var.sqrt(), f64::from(lo), f64::from(hi)))
    }

    /// Initial values follow the references when built through `VarBuilder::from_varmap`.
    #[test]
    fn varmap_initialisation_follows_the_references() -> Result<(), Box<dyn std::error::Error>> {
        let backbone = ResNetConfig::from_kind(&BackboneKind::Resnext50_32x4dCbam).scaled(
            2,
            Some([1, 1, 1, 1]),
            Some(8),
        );
        let cfg = MtaNetConfig::new(backbone, 8, 7);
        let varmap = VarMap::new();
        MtaNet::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?;
        let data = varmap.data().lock().map_err(|_| "lock")?;
        let get = |k: &str| {
            data.get(k)
                .map(|v| v.as_tensor().clone())
                .ok_or(format!("missing {k}"))
        };

        // Kaiming normal fan-out: layer4.0.conv3 is [1024, 512, 1, 1] -> std sqrt(2 / 1024).
        let (mean, std, _, _) = stats(&get("backbone.layer4.0.conv3.weight")?)?;
        let want = (2.0f64 / 1024.0).sqrt();
        assert!(mean.abs() < 0.05 * want, "mean {mean}");
        assert!((std / want - 1.0).abs() < 0.02, "std {std} want {want}");
        // BN: weight 1, bias 0, running stats 0 / 1; CBAM spatial BN weight 0.
        for (k, v) in [
            ("backbone.layer2.0.bn2.weight", 1.0),
            ("backbone.layer2.0.bn2.bias", 0.0),
            ("backbone.bn1.running_var", 1.0),
            ("backbone.layer3.0.cbam.SpatialGate.spatial.bn.weight", 0.0),
            ("backbone.layer3.0.cbam.ChannelGate.mlp.1.bias", 0.0),
        ] {
            let (_, _, lo, hi) = stats(&get(k)?)?;
            assert!(lo == v && hi == v, "{k}: [{lo}, {hi}] expected {v}");
        }
        // Linear layers: PyTorch default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), uniform std b/sqrt(3).
        let (_, std, lo, hi) = stats(&get("head.avg_fc.weight")?)?;
        let bound = 1.0 / 1024f64.sqrt();
        assert!(
            lo >= -bound && hi <= bound && hi > 0.95 * bound,
            "[{lo}, {hi}] vs {bound}"
        );
        assert!(
            (std / (bound / 3f64.sqrt()) - 1.0).abs() < 0.02,
            "std {std}"
        );
        let (_, _, lo, hi) = stats(&get("head.va.bias")?)?;
        let bound = 1.0 / 1024f64.sqrt();
        assert!(lo >= -bound && hi <= bound);
        Ok(())
    }
}
