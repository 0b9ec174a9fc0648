//! The multi-task track's file: [`FILE_NAME`] under the prediction folder, header [`HEADER`],
//! then one row per video frame: `video/00001.jpg,valence,arousal,expression,aus`.
//!
//! `expression` is the class index in the order of the expression names written by
//! `mtanet predict` (the root's header, else the model's: `Neutral, ..., Other`). `aus` is the
//! 0/1 decisions joined without separator (`010000000001`), one digit per AU in the order of
//! the AU names written (the root's header, else the model's: `AU1, AU2, ..., AU26`), so every
//! row has exactly five comma-separated fields.

use super::abaw2020::FrameLine;
use super::abaw2023::image_location;

/// The file name.
pub const FILE_NAME: &str = "MTL_Challenge.txt";

/// The header, without its newline.
pub const HEADER: &str = "image,valence,arousal,expression,aus";

/// Appends the row (with its newline) of frame `frame` (1-based) of `video`. Valence and
/// arousal are clamped to `[-1, 1]` and written as the shortest round-trip `f32` text.
pub fn push_row(out: &mut String, video: &str, frame: usize, d: &FrameLine<'_>) {
    use std::fmt::Write;
    let [v, a] = d.va.map(|x| x.clamp(-1.0, 1.0));
    let _ = write!(out, "{},{v},{a},{},", image_location(video, frame), d.expr);
    out.extend(d.au.iter().map(|&b| if b == 1 { '1' } else { '0' }));
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aus_are_one_digit_each_without_separator() {
        let au = [0u8, 1, 1, 0];
        let d = FrameLine {
            va: [0.25, 1.5],
            au: &au,
            expr: 7,
        };
        let mut s = String::new();
        push_row(&mut s, "12-24-1920x1080", 120, &d);
        assert_eq!(s, "12-24-1920x1080/00120.jpg,0.25,1,7,0110\n");
        assert_eq!(s.trim_end().split(',').count(), HEADER.split(',').count());
    }
}
