//! Seed derivation for the whole workspace: every random stream is a pure function of its
//! coordinates (seed, epoch, position, ...) or names, never of thread scheduling or of the
//! order in which streams are drawn, so a resumed run draws exactly what an uninterrupted one
//! would.
//!
//! Two keyings share one SplitMix64 finaliser: [`mix`] hashes numeric coordinates (the data
//! pipeline), [`stream_seed`] hashes names under a master seed (weights, dropout, data order).
#![warn(missing_docs)]

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// SplitMix64 finaliser (Steele, Lea and Flood 2014; the output function of `java.util.SplittableRandom`).
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes a list of numeric coordinates into one seed; order and length matter.
pub fn mix(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x6A09_E667_F3BC_C909, |h, &p| splitmix(h ^ splitmix(p)))
}

/// A ChaCha8 generator for the given numeric coordinates (seeded with [`mix`]).
pub fn rng(parts: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(parts))
}

/// The 64-bit FNV-1a offset basis: the state [`fnv1a`] starts from.
pub const FNV1A_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// 64-bit FNV-1a: the state `h` advanced over `bytes` (start from [`FNV1A_BASIS`]; feeding
/// bytes in pieces gives the hash of their concatenation).
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A 64-bit seed for the stream named by `parts` under `seed` (FNV-1a over the parts, each
/// followed by a `0xff` separator byte, then SplitMix64 finalisation).
pub fn stream_seed(seed: u64, parts: &[&str]) -> u64 {
    let h = parts.iter().fold(FNV1A_BASIS ^ seed, |h, p| {
        fnv1a(fnv1a(h, p.as_bytes()), &[0xff])
    });
    splitmix(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    /// SplitMix64 written out from its definition: the state advances by the golden-ratio
    /// increment, then the value goes through two xor-shift-multiply rounds and a final xor-shift.
    fn splitmix_reference(x: u64) -> u64 {
        let golden = 0x9e3779b97f4a7c15_u64;
        let mut z = x.wrapping_add(golden);
        z ^= z >> 30;
        z = z.wrapping_mul(0xbf58476d1ce4e5b9);
        z ^= z >> 27;
        z = z.wrapping_mul(0x94d049bb133111eb);
        z ^= z >> 31;
        z
    }

    /// `mix` as a plain loop from its fixed start value.
    fn mix_reference(parts: &[u64]) -> u64 {
        let mut h = 0x6a09e667f3bcc909_u64;
        for &p in parts {
            h = splitmix_reference(h ^ splitmix_reference(p));
        }
        h
    }

    /// `stream_seed` as a plain loop: 64-bit FNV-1a (offset basis xor seed), names separated
    /// by a 0xff byte, SplitMix64 at the end.
    fn stream_seed_reference(seed: u64, parts: &[&str]) -> u64 {
        const FNV_OFFSET: u64 = 14695981039346656037;
        const FNV_PRIME: u64 = 1099511628211;
        let mut bytes = Vec::new();
        for p in parts {
            bytes.extend_from_slice(p.as_bytes());
            bytes.push(0xff);
        }
        let mut h = FNV_OFFSET ^ seed;
        for b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
        splitmix_reference(h)
    }

    #[test]
    fn splitmix_matches_the_published_sequence() {
        // SplittableRandom / splitmix64.c with state 0: the first output is splitmix(0).
        assert_eq!(splitmix(0), 0xe220a8397b1dcdaf);
        // The second output comes from state 2 * golden = splitmix(golden).
        assert_eq!(splitmix(0x9e3779b97f4a7c15), 0x6e789e6aa1b965f4);
        for x in [1, 2, 42, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(splitmix(x), splitmix_reference(x));
        }
    }

    #[test]
    fn mix_order_and_values_matter() {
        assert_ne!(mix(&[1, 2]), mix(&[2, 1]));
        assert_ne!(mix(&[0]), mix(&[0, 0]));
        assert_ne!(mix(&[5, 6, 7]), mix(&[5, 6, 8]));
        assert_eq!(mix(&[5, 6, 7]), mix(&[5, 6, 7]));
        assert_eq!(mix(&[]), 0x6a09e667f3bcc909);
    }

    #[test]
    fn mix_equals_reference() {
        for parts in [
            &[][..],
            &[0],
            &[1, 2],
            &[2, 1],
            &[u64::MAX, 0, 7, 0xdead_beef],
        ] {
            assert_eq!(mix(parts), mix_reference(parts), "{parts:?}");
        }
    }

    #[test]
    fn rng_is_chacha8_seeded_with_mix() {
        let mut a = rng(&[3, 4]);
        let mut b = ChaCha8Rng::seed_from_u64(mix_reference(&[3, 4]));
        let mut c = rng(&[4, 3]);
        let (x, y, z) = (a.next_u64(), b.next_u64(), c.next_u64());
        assert_eq!(x, y);
        assert_ne!(x, z);
    }

    #[test]
    fn stream_seed_order_names_and_seed_matter() {
        assert_eq!(stream_seed(1, &["a", "b"]), stream_seed(1, &["a", "b"]));
        assert_ne!(stream_seed(1, &["a", "b"]), stream_seed(1, &["b", "a"]));
        assert_ne!(stream_seed(1, &["a", "b"]), stream_seed(1, &["ab"]));
        assert_ne!(stream_seed(1, &["a"]), stream_seed(2, &["a"]));
        assert_ne!(stream_seed(1, &[]), stream_seed(1, &[""]));
    }

    #[test]
    fn stream_seed_equals_reference() {
        for seed in [0, 1, 42, u64::MAX] {
            for parts in [
                &[][..],
                &[""],
                &["weights"],
                &["init", "layer1.0.conv1.weight"],
                &["dropout", "3", "17"],
            ] {
                assert_eq!(
                    stream_seed(seed, parts),
                    stream_seed_reference(seed, parts),
                    "{seed} {parts:?}"
                );
            }
        }
    }
}
