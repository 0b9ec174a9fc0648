//! Run-time compilation of this crate's CUDA C with NVRTC, straight to a CUBIN for the device's
//! own architecture, a per-device cache of the loaded modules and a per-thread cache of the
//! loaded functions (see the module docs of [`crate::cuda`] for why).

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaModule};
use candle_core::cuda_backend::cudarc::nvrtc::{result, sys, Ptx};
use candle_core::cuda_backend::{CudaDevice, DeviceId, WrapErr};
use candle_core::{bail, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::{Arc, LazyLock, Mutex};

/// Owns an NVRTC program and destroys it when dropped.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by `create_program` and destroyed only here.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

/// Compiles CUDA C `src` (named `name` in diagnostics) with NVRTC for compute capability
/// `major.minor` and returns the CUBIN. Runs on any machine with `libnvrtc`, GPU or not.
pub fn compile_cubin(src: &str, name: &str, (major, minor): (i32, i32)) -> Result<Vec<u8>> {
    let c_src = match CString::new(src) {
        Ok(s) => s,
        Err(_) => bail!("nvrtc: source of {name} contains a NUL byte"),
    };
    let c_name = match CString::new(name) {
        Ok(s) => s,
        Err(_) => bail!("nvrtc: program name {name:?} contains a NUL byte"),
    };
    let prog = match result::create_program(&c_src, Some(&c_name)) {
        Ok(p) => Program(p),
        Err(e) => bail!("nvrtc: cannot create program {name}: {e:?}"),
    };
    let arch = format!("--gpu-architecture=sm_{major}{minor}");
    // SAFETY: `prog` is a live program; the options are plain NVRTC flags.
    if let Err(e) = unsafe { result::compile_program(prog.0, &[arch.as_str()]) } {
        // SAFETY: as above.
        let log = match unsafe { result::get_program_log(prog.0) } {
            Ok(raw) => {
                // SAFETY: NVRTC returns a NUL-terminated log of the size it reported.
                unsafe { CStr::from_ptr(raw.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            }
            Err(_) => String::from("(no log)"),
        };
        bail!("nvrtc: compiling {name} for sm_{major}{minor} failed: {e:?}\n{log}")
    }
    let mut size = 0usize;
    // SAFETY: the program compiled for a real architecture, so a CUBIN exists.
    if let Err(e) = unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }.result() {
        bail!("nvrtc: no CUBIN for {name}: {e:?}")
    }
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` has the size NVRTC reported.
    if let Err(e) = unsafe { sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr().cast()) }.result() {
        bail!("nvrtc: cannot read the CUBIN of {name}: {e:?}")
    }
    Ok(cubin)
}

type ModuleKey = (DeviceId, &'static str);

static MODULES: LazyLock<Mutex<HashMap<ModuleKey, Arc<CudaModule>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A loaded function: device, module, function name.
type FunctionKey = (DeviceId, &'static str, &'static str);

thread_local! {
    /// Functions this thread has launched: the launch path takes no lock and makes no driver
    /// call once a function is here.
    static FUNCTIONS: RefCell<HashMap<FunctionKey, CudaFunction>> = RefCell::new(HashMap::new());
}

/// Function `fn_name` of module `module` (CUDA C `src`) on `dev`: compiled for the device's
/// architecture and loaded on first use in the process (under a lock), then taken from a
/// per-thread cache.
pub(crate) fn function(
    dev: &CudaDevice,
    module: &'static str,
    src: &'static str,
    fn_name: &'static str,
) -> Result<CudaFunction> {
    let key = (dev.id(), module, fn_name);
    if let Some(f) = FUNCTIONS.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(f);
    }
    let mdl = {
        let mut modules = match MODULES.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        match modules.get(&(dev.id(), module)) {
            Some(m) => m.clone(),
            None => {
                let ctx = dev.cuda_stream().context().clone();
                let arch = ctx.compute_capability().w()?;
                let cubin = compile_cubin(src, module, arch)?;
                let m = ctx.load_module(Ptx::from_binary(cubin)).w()?;
                modules.insert((dev.id(), module), m.clone());
                m
            }
        }
    };
    let f = mdl.load_function(fn_name).w()?;
    FUNCTIONS.with(|c| c.borrow_mut().insert(key, f.clone()));
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC needs no GPU: the max-pool source must compile for the architectures we run on.
    #[test]
    fn max_pool_source_compiles_to_a_cubin() -> Result<()> {
        for arch in [(8, 0), (9, 0)] {
            let cubin = compile_cubin(super::super::max_pool::SOURCE, "max_pool.cu", arch)?;
            assert_eq!(
                &cubin[..4],
                b"\x7fELF",
                "sm_{}{}: not an ELF CUBIN",
                arch.0,
                arch.1
            );
        }
        Ok(())
    }

    /// Every other CUDA C source of the crate compiles for sm_80 and sm_90 too, and its CUBIN
    /// names each kernel the Rust side launches.
    #[test]
    fn all_sources_compile_to_cubins() -> Result<()> {
        use super::super::{elementwise, gate, norm};
        let sources: [(&str, &str, &[&str]); 3] = [
            (
                norm::SOURCE,
                "norm.cu",
                &[
                    "mtanet_bn_row_sums",
                    "mtanet_bn_mean",
                    "mtanet_bn_finalize",
                    "mtanet_bn_running",
                    "mtanet_scale_shift",
                    "mtanet_bn_gated_row_sums",
                    "mtanet_bn_gated_finalize",
                    "mtanet_bn_train_dx",
                    "mtanet_affine_dx",
                ],
            ),
            (
                gate::SOURCE,
                "gate.cu",
                &[
                    "mtanet_gate_mul",
                    "mtanet_gate_channel_dgate",
                    "mtanet_gate_spatial_dgate",
                    "mtanet_channel_max_mean",
                    "mtanet_channel_max_mean_grad",
                ],
            ),
            (
                elementwise::SOURCE,
                "elementwise.cu",
                &[
                    "mtanet_add_relu",
                    "mtanet_relu_mask",
                    "mtanet_opt_accumulate",
                    "mtanet_opt_sgd_apply",
                    "mtanet_opt_adam_apply",
                    "mtanet_sum_squares_partial",
                    "mtanet_sum_f64",
                ],
            ),
        ];
        for (src, name, kernels) in sources {
            for arch in [(8, 0), (9, 0)] {
                let cubin = compile_cubin(src, name, arch)?;
                assert_eq!(&cubin[..4], b"\x7fELF", "{name} sm_{}{}", arch.0, arch.1);
                for k in kernels {
                    let found = cubin
                        .windows(k.len() + 1)
                        .any(|w| w[..k.len()] == *k.as_bytes() && w[k.len()] == 0);
                    assert!(found, "{name} sm_{}{}: no symbol {k}", arch.0, arch.1);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn compile_errors_carry_the_log() {
        let err =
            compile_cubin("this is not CUDA", "broken.cu", (9, 0)).expect_err("must not compile");
        assert!(err.to_string().contains("broken.cu"), "{err}");
    }
}
