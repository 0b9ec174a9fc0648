//! One layer's weights in the layouts the forward kernels derive from them, kept from one call
//! to the next.
//!
//! On every call Winograd's forward transforms each filter (`U = G g G^T`: 16 or 36 values per
//! 9, `winograd.rs`, `winograd_lanes.rs`), the dense 3x3 kernel turns the weights into
//! blocks of 64 output channels (`direct3x3_dense.rs`) and the wide direct kernel turns each
//! group to `(c_in, 9, c_out)` (`direct3x3_wide.rs`; ResNeXt's grouped layers on AVX-512). In
//! ResNet-50's eval forward at 112x112 input that is about 6% of the time (AMD Zen 5, batch 16
//! and 32), most of it the 7x7 and 4x4 layers, whose weights outweigh their maps. Where the
//! weights stay the same from one call to the next (an evaluation pass over many batches), the
//! caller hands the forward a [`WeightPacks`] for the layer: each layout is derived on the first
//! call that needs it and read on the others. A layout is what the kernel would have derived, so
//! the outputs are the same bits with or without the store.
//!
//! The store does not look at the weights: its owner guarantees they do not change while it is
//! kept (`EvalPacks`, which owns one per layer for a pass, compares 64 of their values at every
//! call and refuses a layer whose weights changed).

use super::scratch::Scratch;
use std::sync::{Arc, Mutex};

/// A layout derived from a layer's weights alone (not from the batch or the map size), as one
/// kernel reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PackKind {
    /// Winograd's transformed filters with `a x a` values each, in `winograd.rs`'s layout.
    Winograd { a: usize },
    /// The same, in `winograd_lanes.rs`'s layout.
    WinogradLanes { a: usize },
    /// `direct3x3_dense.rs`'s blocks of 64 output channels.
    Dense,
    /// `direct3x3_wide.rs`'s groups turned to `(c_in, 9, c_out)`.
    Wide,
}

/// The layouts derived so far from one layer's weights (see the module doc). Empty when made;
/// shared between threads.
#[derive(Debug, Default)]
pub struct WeightPacks {
    forms: Mutex<Vec<(PackKind, Arc<Scratch>)>>,
}

impl WeightPacks {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Layouts held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no layout is held yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PackKind, Arc<Scratch>)>> {
        // A panic while the lock was held left the list whole (pushes only): go on with it.
        self.forms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `kind` layout of a layer's weights: `packs`' copy where it holds one, else `pack()`,
/// kept in `packs` for the next call. The lock is not held while packing (which runs in
/// parallel); two calls that race both pack and the first one kept stays, with the same
/// values.
pub(super) fn packed(
    packs: Option<&WeightPacks>,
    kind: PackKind,
    pack: impl FnOnce() -> Scratch,
) -> Arc<Scratch> {
    let Some(packs) = packs else {
        return Arc::new(pack());
    };
    if let Some((_, form)) = packs.lock().iter().find(|(k, _)| *k == kind) {
        return Arc::clone(form);
    }
    let form = Arc::new(pack());
    let mut forms = packs.lock();
    match forms.iter().find(|(k, _)| *k == kind) {
        Some((_, kept)) => Arc::clone(kept),
        None => {
            forms.push((kind, Arc::clone(&form)));
            form
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::forward::{eval_forward_into_then, forward};
    use super::super::select::{with_algorithm, Algorithm};
    use super::super::{differing_bits, test_values, ConvGeometry};
    use super::*;
    use crate::cpu_features::avx512_kernels;

    /// Winograd F(2x2) and F(4x4), the dense kernel over the batch and the wide direct kernel
    /// (`Direct` on a layer of 64 output channels): the first call with a store keeps one
    /// layout there and gives the values of the call without one, bit for bit; the second
    /// reads the kept layout (a call on other weights with that store gives the first
    /// weights' values, so it did not pack again).
    #[test]
    fn a_kept_layout_gives_the_same_bits_and_is_read_again() {
        let g = ConvGeometry::new(&[2, 16, 6, 6], &[64, 16, 3, 3], 1, 1, 1).unwrap();
        let x = test_values(2 * 16 * 36, 3);
        let (w, other) = (test_values(64 * 16 * 9, 5), test_values(64 * 16 * 9, 7));
        for algorithm in [
            Algorithm::Winograd2,
            Algorithm::Winograd4,
            Algorithm::DirectDense,
            Algorithm::Direct,
        ] {
            let sixteen_lanes = matches!(algorithm, Algorithm::DirectDense | Algorithm::Direct);
            if sixteen_lanes && !avx512_kernels() {
                eprintln!("skipped {algorithm:?}: its layout is packed only on AVX-512 CPUs");
                continue;
            }
            with_algorithm(algorithm, || {
                let plain = forward(&g, &x, &w);
                let packs = WeightPacks::new();
                let run = |w: &[f32]| {
                    let mut y = vec![f32::NAN; plain.len()];
                    eval_forward_into_then(&g, &x, (w, Some(&packs)), &mut y, &|_, _| {});
                    y
                };
                let first = run(&w);
                assert_eq!(packs.len(), 1, "{algorithm:?}: one layout kept");
                assert_eq!(
                    differing_bits(&first, &plain),
                    0,
                    "{algorithm:?}: first call"
                );
                let again = run(&other);
                assert_eq!(packs.len(), 1, "{algorithm:?}: nothing packed again");
                assert_eq!(
                    differing_bits(&again, &plain),
                    0,
                    "{algorithm:?}: kept layout"
                );
                assert_ne!(differing_bits(&forward(&g, &x, &other), &plain), 0);
            });
        }
    }

    /// The evaluation forward of a 4x4 map with 512 channels at batch 16: on AMD Zen 5 the
    /// values of the forward forced to F(4x4), its transformed filters kept (one layout), and
    /// not the training forward's (GEMM, or the dense kernel on Zen 4); elsewhere the training
    /// forward's values.
    #[test]
    fn the_eval_forward_of_a_one_tile_map_is_f4_on_zen5() {
        let g = ConvGeometry::new(&[16, 512, 4, 4], &[512, 512, 3, 3], 1, 1, 1).unwrap();
        let x = test_values(16 * 512 * 16, 3);
        let w: Vec<f32> = test_values(512 * 512 * 9, 5)
            .iter()
            .map(|v| v * 0.05)
            .collect();
        let packs = WeightPacks::new();
        let mut eval = vec![f32::NAN; 16 * 512 * 16];
        eval_forward_into_then(&g, &x, (&w, Some(&packs)), &mut eval, &|_, _| {});
        let training = forward(&g, &x, &w);
        if crate::cpu_features::amd_avx512() {
            let f4 = with_algorithm(Algorithm::Winograd4, || forward(&g, &x, &w));
            assert_eq!(differing_bits(&eval, &f4), 0);
            assert_ne!(differing_bits(&eval, &training), 0);
            assert_eq!(packs.len(), 1);
        } else {
            assert_eq!(differing_bits(&eval, &training), 0);
        }
    }
}
