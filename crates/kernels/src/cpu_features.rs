//! What this CPU can run, detected once per process, for the kernels that dispatch at run time
//! (the committed build targets AVX2; wider instructions are taken only where they exist), and
//! which of the measured kinds of CPU it is ([`CpuKind`]), on which the convolution's choices
//! depend (`conv2d/select.rs`).

/// AVX-512F on this CPU (checked once).
pub(crate) fn avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX512F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX512F.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AVX2 and FMA (the committed build's baseline, `.cargo/config.toml`) without AVX-512F: the
/// CPUs the eight-lane kernels were measured on (an AMD EPYC Zen 3), where the sixteen-lane
/// ones cannot run.
pub(crate) fn avx2_only() -> bool {
    cfg!(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )) && !avx512f()
}

/// The kinds of CPU whose kernel choices were measured apart ([`cpu_kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuKind {
    /// Intel with AVX-512 (`GenuineIntel`, `avx512f`): `gemm`'s AVX-512 kernel, the wide direct
    /// kernel (`direct3x3_wide.rs`) and the dense kernel over the batch (`direct3x3_dense.rs`)
    /// run on full-width units. Measured on a 2-core Xeon (family 6, model 167).
    IntelAvx512,
    /// AMD Zen 5 server cores (`AuthenticAMD`, family 0x1A, models 0x00-0x1F: EPYC 9005) with
    /// `avx512f`: full-width 512-bit units, like Intel's. Measured on a 2-core EPYC (model
    /// 0x02); two dense choices differ from Intel's (`measured_choice`). Other Zen 5 parts
    /// (some mobile ones split 512-bit operations) count as [`CpuKind::Other`] until measured.
    Zen5Avx512,
    /// AMD Zen 4 (`AuthenticAMD`, family 0x19 with `avx512f`; Zen 3, the same family, has no
    /// AVX-512), which splits 512-bit operations over 256-bit units. Measured on a 2-core EPYC
    /// (model 0x11): Zen 5's choices beat the AVX2 kernels there too (`amd_avx512`,
    /// `avx512_kernels`), except two: the 1x1 layers' register blocks (`pointwise_nchw.rs`)
    /// run on fewer shapes there (`zen4`), and the direct kernel's blocks of positions
    /// (`direct3x3_positions512.rs`), no faster there, stay Zen 5's alone.
    Zen4Avx512,
    /// Any other CPU, AVX2 without AVX-512 among them: the AVX2 kernels and the choices measured
    /// with them on Zen 4 (on AMD's Zen 3 a few of its own, `avx2_only`).
    Other,
}

/// The kind of this CPU (see [`CpuKind`]), from `cpuid`: vendor, family and model. Read once
/// per process: the choice stays a function of the geometry on a given machine, the same for
/// every thread count.
pub fn cpu_kind() -> CpuKind {
    static KIND: std::sync::OnceLock<CpuKind> = std::sync::OnceLock::new();
    *KIND.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::__cpuid;
            if !avx512f() {
                return CpuKind::Other;
            }
            let leaf = __cpuid(0);
            let vendor = [leaf.ebx, leaf.edx, leaf.ecx]
                .map(u32::to_le_bytes)
                .concat();
            let eax = __cpuid(1).eax;
            let base_family = (eax >> 8) & 0xf;
            let (family, model) = if base_family == 0xf {
                (
                    base_family + ((eax >> 20) & 0xff),
                    ((eax >> 4) & 0xf) | (((eax >> 16) & 0xf) << 4),
                )
            } else {
                (base_family, (eax >> 4) & 0xf)
            };
            match vendor.as_slice() {
                b"GenuineIntel" => CpuKind::IntelAvx512,
                b"AuthenticAMD" if family == 0x1a && model <= 0x1f => CpuKind::Zen5Avx512,
                b"AuthenticAMD" if family == 0x19 => CpuKind::Zen4Avx512,
                _ => CpuKind::Other,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuKind::Other
        }
    })
}

/// True on AMD Zen 5 server cores with AVX-512 ([`CpuKind::Zen5Avx512`]), where the direct
/// kernel's blocks of positions run, and the 1x1 register blocks on every shape they fit.
pub(crate) fn zen5() -> bool {
    cpu_kind() == CpuKind::Zen5Avx512
}

/// True on AMD Zen 4 with AVX-512 ([`CpuKind::Zen4Avx512`]), where the 1x1 register blocks
/// run on the shapes measured faster there than the GEMMs (`pointwise_nchw.rs`'s `applies`).
pub(crate) fn zen4() -> bool {
    cpu_kind() == CpuKind::Zen4Avx512
}

/// True where 512-bit operations run on full-width units (Intel with AVX-512, AMD Zen 5 server
/// cores): the choices measured faster only there (`measured_choice`'s dense kernel over the
/// batch on Intel's stride-1 layers, the stride-2 input gradient's interleave on 16 lanes).
pub(crate) fn avx512_full_width() -> bool {
    matches!(cpu_kind(), CpuKind::IntelAvx512 | CpuKind::Zen5Avx512)
}

/// True on AMD's AVX-512 cores measured here, Zen 5 and Zen 4 ([`CpuKind::Zen5Avx512`],
/// [`CpuKind::Zen4Avx512`]): the choices first measured on Zen 5 (Winograd with its transforms
/// on channel lanes and the tiles `select.rs` lists, the stem's direct kernel, the row kernels
/// of grouped layers, the dense stride-2 input gradient by phases and weight gradient over the
/// batch).
pub(crate) fn amd_avx512() -> bool {
    matches!(cpu_kind(), CpuKind::Zen5Avx512 | CpuKind::Zen4Avx512)
}

/// True where the sixteen-lane kernels run (the wide kernel of grouped layers, the dense kernel
/// over the batch and its weight gradient, the stem's on 16 lanes, the 1x1 layers' register
/// blocks, each where its own choice takes it): every measured kind with AVX-512, Intel's, Zen
/// 5 and Zen 4 (whose split units still ran them faster than the AVX2 kernels).
pub(crate) fn avx512_kernels() -> bool {
    cpu_kind() != CpuKind::Other
}
