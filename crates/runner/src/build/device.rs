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

/// Opens the device (see [`open_explained`]); for `auto` the choice and its reason go to the
/// log (info), and to the console (warning) when a CUDA build falls back to the CPU.
pub fn open(spec: DeviceSpec) -> anyhow::Result<Device> {
    let (device, why) = open_explained(spec)?;
    if spec == DeviceSpec::Auto {
        if cfg!(feature = "cuda") && device.is_cpu() {
            tracing::warn!("device auto: {why}");
        } else {
            tracing::info!("device auto: {why}");
        }
    }
    Ok(device)
}

/// Opens the device and says which one and why.
///
/// - `cpu`: the CPU.
/// - `cuda:N`: CUDA device N, or an error (never a fallback): on a build without CUDA the
///   error gives the rebuild command; on a CUDA build that cannot open the device (no GPU, no
///   driver, a bad index) it gives the driver's message.
/// - `auto`: CUDA device 0 when this build has CUDA and the device opens, else the CPU, with
///   the reason (built without CUDA, or the driver's error).
///
/// Every CUDA device opened here keeps freed memory in its pool
/// (`mtanet_kernels::cuda::memory::keep_freed_memory`).
pub fn open_explained(spec: DeviceSpec) -> anyhow::Result<(Device, String)> {
    match spec {
        DeviceSpec::Cpu => Ok((Device::Cpu, "cpu (requested)".into())),
        DeviceSpec::Auto => {
            if !candle_core::utils::cuda_is_available() {
                return Ok((
                    Device::Cpu,
                    "cpu: this binary was built without CUDA (`--features cuda` adds it)".into(),
                ));
            }
            match open_cuda(0) {
                Ok(d) => Ok((
                    d,
                    "cuda:0: this binary has CUDA and the device opened".into(),
                )),
                Err(e) => Ok((
                    Device::Cpu,
                    format!("cpu: this binary has CUDA, but cuda:0 did not open: {e:#}"),
                )),
            }
        }
        DeviceSpec::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                anyhow::bail!(
                    "device cuda:{n} requested, but this binary was built without CUDA: \
                     rebuild with `cargo build --release --features cuda` or use --device cpu"
                );
            }
            let d = open_cuda(n).map_err(|e| {
                anyhow::anyhow!(
                    "device cuda:{n} requested, but it cannot be opened (no GPU or driver?): \
                     {e:#}; use device cpu, or auto to fall back to the CPU"
                )
            })?;
            Ok((d, format!("cuda:{n} (requested)")))
        }
    }
}

/// Opens CUDA device `n` and lets its memory pool keep freed memory.
fn open_cuda(n: usize) -> anyhow::Result<Device> {
    let device = Device::new_cuda(n)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = &device {
        mtanet_kernels::cuda::memory::keep_freed_memory(d)?;
    }
    Ok(device)
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

    #[test]
    fn auto_says_what_it_chose_and_why() {
        let (d, why) = open_explained(DeviceSpec::Auto).unwrap();
        if cfg!(feature = "cuda") {
            assert!(
                why.starts_with("cuda:0") || why.contains("did not open"),
                "{why}"
            );
        } else {
            assert!(d.is_cpu());
            assert!(why.contains("built without CUDA"), "{why}");
        }
    }

    #[test]
    fn cuda_without_a_gpu_is_an_error_not_a_fallback() {
        if cfg!(feature = "cuda") {
            // Device 99 exists nowhere: an error naming the device, never the CPU.
            let e = open_explained(DeviceSpec::Cuda(99)).unwrap_err();
            assert!(format!("{e:#}").contains("cuda:99"), "{e:#}");
        } else {
            let e = open_explained(DeviceSpec::Cuda(0)).unwrap_err();
            assert!(e.to_string().contains("built without CUDA"), "{e}");
        }
    }
}
