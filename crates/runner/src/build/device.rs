//! Device selection: `cpu`, `cuda:N` or `auto`.

use candle_core::Device;

/// A parsed device request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
    /// CUDA 0 when this build has CUDA and a GPU is present, else the CPU.
    Auto,
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto`; the error says what is accepted.
pub fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    match s.trim() {
        "cpu" => Ok(DeviceSpec::Cpu),
        "auto" => Ok(DeviceSpec::Auto),
        "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceSpec::Cuda)
            .ok_or_else(|| format!("`{other}` is not a device: use cpu, cuda:N or auto")),
    }
}

/// Opens the device; `cuda:N` on a build without CUDA fails with the rebuild command.
pub fn open(spec: DeviceSpec) -> anyhow::Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => {
            if candle_core::utils::cuda_is_available() {
                Ok(Device::new_cuda(0).unwrap_or(Device::Cpu))
            } else {
                Ok(Device::Cpu)
            }
        }
        DeviceSpec::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                anyhow::bail!(
                    "device cuda:{n} requested, but this binary was built without CUDA: \
                     rebuild with `cargo build --release --features cuda` or use --device cpu"
                );
            }
            Ok(Device::new_cuda(n)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_device("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(parse_device("cuda:1"), Ok(DeviceSpec::Cuda(1)));
        assert_eq!(parse_device("auto"), Ok(DeviceSpec::Auto));
        assert!(parse_device("tpu").unwrap_err().contains("tpu"));
        assert!(parse_device("cuda:x").is_err());
    }
}
