//! What the two Winograd implementations share (`winograd.rs`, its transforms on rows of
//! tiles; `winograd_lanes.rs`, on channels in the vector lanes): the tile sizes, the transforms'
//! matrices as types, and the sizes and blocks of images of one convolution ([`Plan`]).

/// Output tile size of a Winograd transform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// F(2x2, 3x3): 4x4 transforms, 16 GEMMs.
    F2,
    /// F(4x4, 3x3): 6x6 transforms, 36 GEMMs.
    F4,
}

/// The three matrices of F(M x M, 3 x 3), with `A = M + 2`.
pub(super) struct Matrices<const M: usize, const A: usize> {
    /// Input transform `B^T` (A x A): `V = B^T d B`.
    bt: [[f32; A]; A],
    /// Filter transform `G` (A x 3): `U = G g G^T`.
    g: [[f32; 3]; A],
    /// Output transform `A^T` (M x A): `Y = A^T M A`.
    at: [[f32; A]; M],
}

const F2: Matrices<2, 4> = Matrices {
    bt: [
        [1.0, 0.0, -1.0, 0.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, -1.0],
    ],
    g: [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ],
    at: [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]],
};

const F4: Matrices<4, 6> = Matrices {
    bt: [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ],
    g: [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ],
    at: [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ],
};

/// A constant `OUT x IN` matrix as a type: the transforms are compiled for its coefficients
/// (zero terms vanish, 1 and -1 become adds and subtracts).
pub(super) trait Coefs<const IN: usize, const OUT: usize> {
    const MAT: [[f32; IN]; OUT];
}

/// The matrices of F(M x M, 3 x 3) as types.
pub(super) trait Winograd<const M: usize, const A: usize> {
    /// `B^T`.
    type Bt: Coefs<A, A>;
    /// `A^T`.
    type At: Coefs<A, M>;
    /// `A`, for the adjoint of the output transform.
    type Adj: Coefs<M, A>;
    /// `G`.
    type G: Coefs<3, A>;
    /// `G^T`, for the adjoint of the filter transform.
    type Gt: Coefs<A, 3>;
}

const fn transpose<const R: usize, const C: usize>(m: [[f32; C]; R]) -> [[f32; R]; C] {
    let mut t = [[0.0; R]; C];
    let mut i = 0;
    while i < R {
        let mut j = 0;
        while j < C {
            t[j][i] = m[i][j];
            j += 1;
        }
        i += 1;
    }
    t
}

/// Defines `$name: Winograd<$m, $a>` from the matrices `$mats`.
macro_rules! winograd_types {
    ($name:ident, $m:literal, $a:literal, $mats:expr, [$bt:ident, $at:ident, $adj:ident, $g:ident, $gt:ident]) => {
        pub(super) struct $bt;
        impl Coefs<$a, $a> for $bt {
            const MAT: [[f32; $a]; $a] = $mats.bt;
        }
        pub(super) struct $at;
        impl Coefs<$a, $m> for $at {
            const MAT: [[f32; $a]; $m] = $mats.at;
        }
        pub(super) struct $adj;
        impl Coefs<$m, $a> for $adj {
            const MAT: [[f32; $m]; $a] = transpose($mats.at);
        }
        pub(super) struct $g;
        impl Coefs<3, $a> for $g {
            const MAT: [[f32; 3]; $a] = $mats.g;
        }
        pub(super) struct $gt;
        impl Coefs<$a, 3> for $gt {
            const MAT: [[f32; $a]; 3] = transpose($mats.g);
        }
        /// The types of this transform's matrices.
        pub(super) struct $name;
        impl Winograd<$m, $a> for $name {
            type Bt = $bt;
            type At = $at;
            type Adj = $adj;
            type G = $g;
            type Gt = $gt;
        }
    };
}

winograd_types!(Winograd2, 2, 4, F2, [Bt2, At2, Adj2, G2, Gt2]);
winograd_types!(Winograd4, 4, 6, F4, [Bt4, At4, Adj4, G4, Gt4]);

/// Tiles per block of images: the transformed inputs and products of one block (`a^2` values
/// per tile and channel) stay near the caches between the transforms and the GEMMs.
const BLOCK_TILES: usize = 1024;

/// Tiles per block of images where the transforms run with the channels in the lanes
/// (`winograd_lanes.rs`), whose transformed tiles (`a^2` values per tile and channel) the GEMMs
/// read back from L2 and L3: `conv_passes` on the dense 3x3 layers of ResNet-50 at 112x112 and
/// 224x224 input (batch 16 and 32, AMD Zen 5) ran 0.7-0.9 of the time of 1024-tile blocks at
/// 28x28 and 56x56 with 384, level on smaller maps (whose batch holds fewer tiles).
const LANES_BLOCK_TILES: usize = 384;

/// True where the transforms run with the channels in the lanes (`winograd_lanes.rs`): AMD
/// Zen 5 and Zen 4, where they were measured (`CpuKind`; Intel's AVX-512 CPUs keep
/// `winograd.rs`'s, unmeasured).
pub(super) fn lanes_here() -> bool {
    cfg!(target_arch = "x86_64") && crate::cpu_features::amd_avx512()
}

/// The 3x3 filters a transform reads: filter `(o, i)` (output channel `o`, input channel `i` of
/// the convolution run) starts at `w[o * o_stride + i * i_stride]`, its 9 taps in order, or in
/// reverse order when `flipped`. A `(C_out, C_in, 3, 3)` weight as it is ([`Filters::forward`]),
/// or read as the input gradient's convolution reads it ([`Filters::swapped_and_flipped`]):
/// without a flipped copy of the weight.
#[derive(Clone, Copy)]
pub(super) struct Filters<'a> {
    w: &'a [f32],
    o_stride: usize,
    i_stride: usize,
    flipped: bool,
}

impl<'a> Filters<'a> {
    /// The `(c_out, c_in, 3, 3)` weight `w`, read as it is.
    pub(super) fn forward(w: &'a [f32], c_in: usize) -> Self {
        Self {
            w,
            o_stride: c_in * 9,
            i_stride: 9,
            flipped: false,
        }
    }

    /// The filters of the input gradient's convolution of a `(c_out, c_in, 3, 3)` weight `w`:
    /// filter `(o, i)` is `w`'s filter `(i, o)` flipped in both spatial axes.
    pub(super) fn swapped_and_flipped(w: &'a [f32], c_in: usize) -> Self {
        Self {
            w,
            o_stride: 9,
            i_stride: c_in * 9,
            flipped: true,
        }
    }

    /// Values of the weight read (`c_out * c_in * 9` for a whole weight).
    pub(super) fn len(&self) -> usize {
        self.w.len()
    }

    /// Tap `t` (row-major over the 3x3 window) of filter `(o, i)`.
    pub(super) fn tap(&self, o: usize, i: usize, t: usize) -> f32 {
        let t = if self.flipped { 8 - t } else { t };
        self.w[o * self.o_stride + i * self.i_stride + t]
    }
}

/// Sizes of one Winograd convolution ("same" 3x3 on `H x W` maps).
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    batch: usize,
    pub(super) c_in: usize,
    pub(super) c_out: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    /// Tile rows and columns per image.
    pub(super) th: usize,
    pub(super) tw: usize,
    /// Images per block (the last block may hold fewer).
    block: usize,
}

impl Plan {
    pub(super) fn new(
        m: usize,
        batch: usize,
        c_in: usize,
        c_out: usize,
        h: usize,
        w: usize,
    ) -> Self {
        let (th, tw) = (h.div_ceil(m), w.div_ceil(m));
        let block = if lanes_here() {
            // As few blocks as LANES_BLOCK_TILES allows, the images shared out evenly.
            batch.div_ceil((batch * th * tw).div_ceil(LANES_BLOCK_TILES))
        } else {
            (BLOCK_TILES / (th * tw)).clamp(1, batch)
        };
        Self {
            batch,
            c_in,
            c_out,
            h,
            w,
            th,
            tw,
            block,
        }
    }

    /// Tiles per image.
    pub(super) fn tiles(&self) -> usize {
        self.th * self.tw
    }

    /// Pixels per map.
    pub(super) fn pixels(&self) -> usize {
        self.h * self.w
    }

    /// The blocks of images: `(first image, images)`.
    pub(super) fn blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.batch)
            .step_by(self.block)
            .map(|b0| (b0, self.block.min(self.batch - b0)))
    }
}
