//! Labels over time for one synthetic video: expression segments (Neutral-heavy), AUs that
//! follow the expression but switch independently, VA that drifts smoothly toward the
//! expression's typical value, and a slowly moving view.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::face::{FaceLabels, View};

/// Expression frequencies (Neutral, Anger, Disgust, Fear, Happiness, Sadness, Surprise):
/// Neutral-heavy like Aff-Wild2, every class >= 7%.
pub const EXPR_P: [f32; 7] = [0.37, 0.085, 0.085, 0.09, 0.155, 0.11, 0.105];

/// Probability of each AU (AU1, AU2, AU4, AU6, AU12, AU15, AU20, AU25) independent of the
/// expression.
const AU_BASE: [f32; 8] = [0.08, 0.07, 0.08, 0.06, 0.08, 0.06, 0.07, 0.15];

/// Probability of each AU given the expression (FACS-style prototypes).
const AU_GIVEN_EXPR: [[f32; 8]; 7] = [
    [0.0; 8],
    [0.0, 0.0, 0.8, 0.0, 0.0, 0.1, 0.2, 0.1],
    [0.0, 0.0, 0.5, 0.1, 0.0, 0.5, 0.0, 0.2],
    [0.7, 0.5, 0.5, 0.0, 0.0, 0.0, 0.7, 0.6],
    [0.0, 0.0, 0.0, 0.85, 0.9, 0.0, 0.0, 0.5],
    [0.7, 0.0, 0.5, 0.0, 0.0, 0.7, 0.0, 0.0],
    [0.85, 0.85, 0.0, 0.0, 0.0, 0.0, 0.0, 0.8],
];

/// Typical (valence, arousal) of each expression.
const VA_OF_EXPR: [[f32; 2]; 7] = [
    [0.0, -0.15],
    [-0.6, 0.6],
    [-0.6, 0.2],
    [-0.5, 0.7],
    [0.7, 0.35],
    [-0.6, -0.45],
    [0.2, 0.75],
];

/// Picks expression segments so that each class's share of segments tracks [`EXPR_P`]
/// closely (largest deficit first, randomised), even in a small set: i.i.d. draws left rare
/// classes at 4-5% in some seeds.
#[derive(Debug, Clone, Default)]
pub struct ExprDeck {
    counts: [f32; 7],
    total: f32,
}

impl ExprDeck {
    /// The next segment's class.
    pub fn next(&mut self, rng: &mut ChaCha8Rng) -> u8 {
        let mut best = (f32::NEG_INFINITY, 0);
        for (c, &p) in EXPR_P.iter().enumerate() {
            let score = p * (self.total + 1.0) - self.counts[c] + 0.8 * rng.random::<f32>();
            if score > best.0 {
                best = (score, c);
            }
        }
        self.counts[best.1] += 1.0;
        self.total += 1.0;
        best.1 as u8
    }

    /// `n` frames of expression segments of 10-40 frames.
    pub fn frames(&mut self, rng: &mut ChaCha8Rng, n: usize) -> Vec<u8> {
        let mut expr = Vec::with_capacity(n);
        while expr.len() < n {
            let e = self.next(rng);
            let len = rng.random_range(10..40);
            expr.extend(std::iter::repeat_n(e, len.min(n - expr.len())));
        }
        expr
    }
}

/// Piecewise-constant uniform noise with segments of `lo..hi` frames.
fn segments(rng: &mut ChaCha8Rng, n: usize, lo: usize, hi: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = rng.random_range(lo..hi);
        let u: f32 = rng.random();
        out.extend(std::iter::repeat_n(u, len.min(n - out.len())));
    }
    out
}

/// Rounds to 3 decimals, as the label files store (kuhnkeF writes `{:.3f}`).
pub fn round3(x: f32) -> f32 {
    (x * 1000.0).round() / 1000.0
}

/// Labels and views for the frames of a video whose expression per frame is `expr`.
pub fn timeline(rng: &mut ChaCha8Rng, expr: &[u8]) -> (Vec<FaceLabels>, Vec<View>) {
    let n = expr.len();
    let au_u: Vec<Vec<f32>> = (0..8).map(|_| segments(rng, n, 8, 40)).collect();
    // Slow per-video VA offsets (sinusoids) on top of the expression's pull.
    let phase: [f32; 4] = std::array::from_fn(|_| rng.random_range(0.0..std::f32::consts::TAU));
    let period: [f32; 2] = std::array::from_fn(|_| rng.random_range(40.0..160.0));
    let amp: [f32; 2] = std::array::from_fn(|_| rng.random_range(0.15..0.35));
    let mut va = [
        VA_OF_EXPR[expr[0] as usize][0],
        VA_OF_EXPR[expr[0] as usize][1],
    ];
    // View: per-video base, slow per-frame wobble.
    let base_shift = [rng.random_range(-3.0..3.0), rng.random_range(-3.0..3.0)];
    let base_scale = rng.random_range(0.93..1.03);
    let light = rng.random_range(0.85..1.1);
    let gradient = rng.random_range(-0.15..0.15);
    let wob: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..std::f32::consts::TAU));

    let mut labels = Vec::with_capacity(n);
    let mut views = Vec::with_capacity(n);
    for t in 0..n {
        let e = expr[t] as usize;
        let tf = t as f32;
        for d in 0..2 {
            let drift = amp[d] * (std::f32::consts::TAU * tf / period[d] + phase[d]).sin();
            let target = (VA_OF_EXPR[e][d] + drift).clamp(-0.95, 0.95);
            let step = 0.12 * (target - va[d]) + rng.random_range(-0.03..0.03);
            va[d] = (va[d] + step).clamp(-1.0, 1.0);
        }
        let au = std::array::from_fn(|i| {
            let p = 1.0 - (1.0 - AU_BASE[i]) * (1.0 - AU_GIVEN_EXPR[e][i]);
            au_u[i][t] < p
        });
        labels.push(FaceLabels {
            va: [round3(va[0]), round3(va[1])],
            au,
            expr: e as u8,
        });
        views.push(View {
            shift: [
                base_shift[0] + 2.0 * (tf / 37.0 + wob[0]).sin(),
                base_shift[1] + 1.5 * (tf / 29.0 + wob[1]).sin(),
            ],
            scale: base_scale + 0.02 * (tf / 43.0 + wob[2]).sin(),
            angle: 0.05 * (tf / 53.0 + phase[2]).sin(),
            light: light * (1.0 + 0.04 * (tf / 31.0 + phase[3]).sin()),
            gradient,
        });
    }
    (labels, views)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn rates_and_smoothness() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut deck = ExprDeck::default();
        let mut hist = [0usize; 7];
        let mut au = [0usize; 8];
        let mut total = 0;
        let mut max_step = 0f32;
        for _ in 0..200 {
            let expr = deck.frames(&mut rng, 150);
            let (l, _) = timeline(&mut rng, &expr);
            for w in l.windows(2) {
                max_step = max_step.max((w[1].va[0] - w[0].va[0]).abs());
            }
            for f in &l {
                hist[f.expr as usize] += 1;
                for (a, &on) in au.iter_mut().zip(&f.au) {
                    *a += on as usize;
                }
                total += 1;
            }
        }
        let neutral = hist[0] as f32 / total as f32;
        assert!((0.33..0.42).contains(&neutral), "{neutral}");
        for (c, &h) in hist.iter().enumerate() {
            assert!(h as f32 / total as f32 > 0.075, "class {c}: {h}");
        }
        for (i, &a) in au.iter().enumerate() {
            let r = a as f32 / total as f32;
            assert!((0.09..0.5).contains(&r), "AU {i}: {r}");
        }
        assert!(max_step < 0.25, "VA drifts smoothly: {max_step}");
    }
}
