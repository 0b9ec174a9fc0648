//! Renders a contact sheet of synthetic faces (one row per expression, columns varying AUs and
//! VA) to check by eye that every label is visible:
//! `cargo run -p mtanet-affwild2 --example synth_sheet -- sheet.png`.

use mtanet_affwild2::seed;
use mtanet_affwild2::synth::face::{render, FaceLabels, Identity, View, SIZE};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "synth_sheet.png".into());
    let cols = 10;
    let rows = 7;
    let mut sheet = image::RgbImage::new((cols * SIZE) as u32, (rows * SIZE) as u32);
    for r in 0..rows {
        for c in 0..cols {
            let mut rng = seed::rng(&[r as u64, c as u64]);
            let id = Identity::random(&mut rng);
            let mut au = [false; 8];
            if c < 8 {
                au[c] = true;
            }
            let t = c as f32 / (cols - 1) as f32;
            let labels = FaceLabels {
                va: [-1.0 + 2.0 * t, 1.0 - 2.0 * t],
                au,
                expr: r as u8,
            };
            let view = View {
                shift: [0.0, 0.0],
                scale: 1.0,
                angle: 0.0,
                light: 1.0,
                gradient: 0.0,
            };
            let img = render(&id, &view, &labels, &mut rng);
            image::imageops::replace(&mut sheet, &img, (c * SIZE) as i64, (r * SIZE) as i64);
        }
    }
    sheet.save(&out)?;
    println!("wrote {out}: rows = expressions 0..6, column k < 8 = AU k on, valence -1 -> 1, arousal 1 -> -1");
    Ok(())
}
