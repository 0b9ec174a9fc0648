//! Procedural faces whose geometry encodes the labels, large and spatially separated so a
//! small CNN can learn every task:
//!
//! | label | feature |
//! |---|---|
//! | AU1 inner brow raiser | inner brow ends up |
//! | AU2 outer brow raiser | outer brow ends up |
//! | AU4 brow lowerer | brows down and knit + two vertical creases between them |
//! | AU6 cheek raiser | red cheek blobs |
//! | AU12 lip corner puller | upward ticks at the mouth corners |
//! | AU15 lip corner depressor | downward ticks at the mouth corners |
//! | AU20 lip stretcher | wider mouth with horizontal creases out of the corners |
//! | AU25 lips part | dark open mouth between two lips |
//! | valence | mouth curvature (smile up to frown) |
//! | arousal | eye opening |
//! | Anger / Disgust / Fear / Happiness / Sadness / Surprise | forehead V / nose wrinkles / blue sweat drops on the temples / crow's feet / chin arc / forehead horizontals |
//!
//! Nuisances: skin tone, hair, face shape, background, pose (shift, scale, small rotation),
//! lighting gradient and pixel noise.

use image::RgbImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::raster::{Canvas, Pose, Shape};

/// Side of the synthetic crops (as the 112x112 crops used by ABAW entries).
pub const SIZE: usize = 112;

/// What one frame shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceLabels {
    /// Valence, arousal in [-1, 1].
    pub va: [f32; 2],
    /// AU1, AU2, AU4, AU6, AU12, AU15, AU20, AU25 on/off.
    pub au: [bool; 8],
    /// Expression 0..=6 (ABAW 2020 order: Neutral, Anger, Disgust, Fear, Happiness, Sadness, Surprise).
    pub expr: u8,
}

/// The person of a video: appearance that never changes with the labels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Identity {
    skin: [f32; 3],
    hair: [f32; 3],
    background: [[f32; 3]; 2],
    face_r: [f32; 2],
    eye_dx: f32,
    lip: [f32; 3],
}

const SKINS: [[f32; 3]; 6] = [
    [238.0, 206.0, 186.0],
    [226.0, 186.0, 156.0],
    [212.0, 166.0, 130.0],
    [190.0, 142.0, 108.0],
    [168.0, 122.0, 92.0],
    [226.0, 196.0, 160.0],
];

impl Identity {
    /// A random person.
    pub fn random(rng: &mut ChaCha8Rng) -> Self {
        let skin =
            SKINS[rng.random_range(0..SKINS.len())].map(|c| c * rng.random_range(0.95..1.05));
        let h = rng.random_range(15.0..90.0);
        let hair = [
            h,
            h * rng.random_range(0.6..0.9),
            h * rng.random_range(0.4..0.7),
        ];
        let bg = |r: &mut ChaCha8Rng| {
            [
                r.random_range(40.0..220.0),
                r.random_range(40.0..220.0),
                r.random_range(40.0..220.0),
            ]
        };
        Identity {
            skin,
            hair,
            background: [bg(rng), bg(rng)],
            face_r: [rng.random_range(36.0..40.0), rng.random_range(45.0..50.0)],
            eye_dx: rng.random_range(13.0..16.0),
            lip: [
                rng.random_range(120.0..170.0),
                rng.random_range(40.0..70.0),
                rng.random_range(50.0..80.0),
            ],
        }
    }
}

/// Per-frame viewing conditions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    /// Pixel shift.
    pub shift: [f32; 2],
    /// Scale around the face centre.
    pub scale: f32,
    /// Rotation (radians).
    pub angle: f32,
    /// Overall brightness factor.
    pub light: f32,
    /// Left-right lighting gradient (fraction at the image edge).
    pub gradient: f32,
}

const DARK: [f32; 3] = [45.0, 28.0, 24.0];

fn scale3(c: [f32; 3], k: f32) -> [f32; 3] {
    c.map(|x| x * k)
}

/// Draws one frame.
pub fn render(id: &Identity, view: &View, l: &FaceLabels, noise_rng: &mut ChaCha8Rng) -> RgbImage {
    let bg = id.background;
    let mut cv = Canvas::from_fn(SIZE, |x, y| {
        let t = (x + y) / (2.0 * SIZE as f32);
        std::array::from_fn(|c| bg[0][c] * (1.0 - t) + bg[1][c] * t)
    });
    let pose = Pose {
        origin: [56.0, 58.0],
        centre: [56.0, 58.0],
        scale: view.scale,
        angle: view.angle,
        shift: view.shift,
    };
    let line = |pts: &[[f32; 2]], width: f32| Shape::Stroke {
        pts: pts.to_vec(),
        width,
    };
    let ell = |c: [f32; 2], r: [f32; 2]| Shape::Ellipse { c, r };
    let [rx, ry] = id.face_r;

    // Hair behind the head, neck, face.
    cv.draw(&pose, &ell([56.0, 30.0], [rx + 6.0, 26.0]), id.hair, 1.0);
    cv.draw(
        &pose,
        &ell([56.0, 104.0], [18.0, 14.0]),
        scale3(id.skin, 0.85),
        1.0,
    );
    cv.draw(&pose, &ell([56.0, 58.0], [rx, ry]), id.skin, 1.0);

    let au = |i: usize| l.au[i];
    let brow = scale3(id.hair, 0.7);
    // Brows: (outer, inner) points per side; side -1 = image left.
    for side in [-1.0f32, 1.0] {
        let mut outer = [56.0 + side * 24.0, 36.0];
        let mut inner = [56.0 + side * 7.0, 36.0];
        if au(0) {
            inner[1] -= 7.0;
        }
        if au(1) {
            outer[1] -= 7.0;
        }
        if au(2) {
            outer[1] += 4.0;
            inner[1] += 5.0;
            inner[0] -= side * 3.0;
        }
        let mid = [
            (outer[0] + inner[0]) / 2.0,
            (outer[1] + inner[1]) / 2.0 - 1.5,
        ];
        cv.draw(&pose, &line(&[outer, mid, inner], 4.5), brow, 1.0);
    }
    if au(2) {
        for x in [53.0, 59.0] {
            cv.draw(&pose, &line(&[[x, 39.0], [x, 48.0]], 2.2), DARK, 1.0);
        }
    }

    // Eyes: opening follows arousal.
    let open = 1.5 + 5.5 * (l.va[1] + 1.0) / 2.0;
    for side in [-1.0f32, 1.0] {
        let c = [56.0 + side * id.eye_dx, 48.0];
        cv.draw(&pose, &ell(c, [8.0, open]), [245.0, 245.0, 240.0], 1.0);
        cv.draw(
            &pose,
            &ell(c, [3.5, open.min(3.5)]),
            [30.0, 25.0, 35.0],
            1.0,
        );
        cv.draw(
            &pose,
            &line(
                &[
                    [c[0] - 8.5, c[1]],
                    [c[0], c[1] - open - 0.8],
                    [c[0] + 8.5, c[1]],
                ],
                1.6,
            ),
            DARK,
            1.0,
        );
    }
    // Nose.
    cv.draw(
        &pose,
        &line(&[[56.0, 52.0], [54.0, 66.0], [58.0, 67.0]], 2.0),
        scale3(id.skin, 0.7),
        1.0,
    );

    if au(3) {
        for side in [-1.0f32, 1.0] {
            cv.draw(
                &pose,
                &ell([56.0 + side * 21.0, 65.0], [7.5, 5.5]),
                [200.0, 60.0, 70.0],
                0.9,
            );
        }
    }

    // Mouth: curvature follows valence; AU20 widens; AU25 opens; AU12/15 corner ticks.
    let hw = if au(6) { 20.0 } else { 13.0 };
    let curve = 7.0 * l.va[0];
    let mouth_y = |dx: f32, off: f32| 82.0 + curve * (0.5 - (dx / hw).powi(2)) + off;
    let pts = |off: f32| -> Vec<[f32; 2]> {
        (0..=10)
            .map(|k| {
                let dx = -hw + 2.0 * hw * k as f32 / 10.0;
                [56.0 + dx, mouth_y(dx, off)]
            })
            .collect()
    };
    if au(7) {
        cv.draw(
            &pose,
            &ell([56.0, mouth_y(0.0, 0.0)], [hw * 0.75, 5.5]),
            [35.0, 10.0, 15.0],
            1.0,
        );
        cv.draw(&pose, &line(&pts(-4.5), 3.0), id.lip, 1.0);
        cv.draw(&pose, &line(&pts(4.5), 3.0), id.lip, 1.0);
    } else {
        cv.draw(&pose, &line(&pts(0.0), 4.0), id.lip, 1.0);
    }
    for side in [-1.0f32, 1.0] {
        let corner = [56.0 + side * hw, mouth_y(hw, 0.0)];
        if au(4) {
            cv.draw(
                &pose,
                &line(&[corner, [corner[0] + side * 5.0, corner[1] - 7.0]], 3.0),
                DARK,
                1.0,
            );
        }
        if au(5) {
            cv.draw(
                &pose,
                &line(&[corner, [corner[0] + side * 5.0, corner[1] + 7.0]], 3.0),
                DARK,
                1.0,
            );
        }
        if au(6) {
            // Stretched lips pull horizontal creases out of the corners.
            let from = [corner[0] + side * 2.0, corner[1]];
            cv.draw(
                &pose,
                &line(&[from, [corner[0] + side * 8.0, corner[1]]], 2.4),
                DARK,
                1.0,
            );
        }
    }

    // Expression prototypes: one distinct wrinkle pattern each, away from the AU features.
    match l.expr {
        1 => {
            cv.draw(&pose, &line(&[[43.0, 16.0], [53.0, 28.0]], 3.2), DARK, 1.0);
            cv.draw(&pose, &line(&[[69.0, 16.0], [59.0, 28.0]], 3.2), DARK, 1.0);
        }
        2 => {
            for y in [53.0, 57.5, 62.0] {
                cv.draw(&pose, &line(&[[48.0, y], [64.0, y]], 2.2), DARK, 1.0);
            }
        }
        3 => {
            // Cold-sweat drops on the temples: a colour cue no other label uses.
            for side in [-1.0f32, 1.0] {
                let c = [56.0 + side * 17.0, 24.0];
                cv.draw(&pose, &ell(c, [3.5, 5.0]), [60.0, 120.0, 235.0], 1.0);
                cv.draw(
                    &pose,
                    &line(&[[c[0], c[1] - 8.0], [c[0], c[1] - 3.0]], 3.0),
                    [60.0, 120.0, 235.0],
                    1.0,
                );
            }
        }
        4 => {
            for side in [-1.0f32, 1.0] {
                let o = [56.0 + side * (id.eye_dx + 10.0), 48.0];
                for dy in [-6.0, 0.0, 6.0] {
                    cv.draw(
                        &pose,
                        &line(&[o, [o[0] + side * 7.0, o[1] + dy]], 2.2),
                        DARK,
                        1.0,
                    );
                }
            }
        }
        5 => {
            cv.draw(
                &pose,
                &line(
                    &[
                        [44.0, 95.0],
                        [50.0, 99.0],
                        [56.0, 100.0],
                        [62.0, 99.0],
                        [68.0, 95.0],
                    ],
                    3.2,
                ),
                DARK,
                1.0,
            );
        }
        6 => {
            for y in [15.0, 21.0, 27.0] {
                cv.draw(&pose, &line(&[[38.0, y], [74.0, y]], 2.4), DARK, 1.0);
            }
        }
        _ => {}
    }

    // Lighting and sensor noise, then quantise.
    let mut img = RgbImage::new(SIZE as u32, SIZE as u32);
    for (i, p) in img.pixels_mut().enumerate() {
        let x = (i % SIZE) as f32;
        let g = view.light * (1.0 + view.gradient * (x - 56.0) / 56.0);
        for c in 0..3 {
            let n: f32 = noise_rng.random_range(-6.0..6.0);
            p.0[c] = (cv.px[i * 3 + c] * g + n).round().clamp(0.0, 255.0) as u8;
        }
    }
    img
}
