//! The multi-task track's file: [`FILE_NAME`] under the prediction folder, header [`HEADER`],
//! then one row per video frame: `video/00001.jpg,valence,arousal,expression,` then the 0/1
//! decision of each AU as its own field (`...,3,0,1,0,0,0,0,0,0,0,0,0,1` for 12 AUs).
//!
//! `expression` is the class index in the order of the expression names written by
//! `mtanet predict` (the root's header, else the model's: `Neutral, ..., Other`). The AU
//! fields follow the order of the AU names written (the root's header, else the model's:
//! `AU1, AU2, ..., AU26`), so a row has 4 + (number of AUs) comma-separated fields while the
//! header names the AU fields together as `aus`, as the public ABAW multi-task writers do.

use super::abaw2020::FrameLine;
use super::abaw2023::image_location;

/// The file name.
pub const FILE_NAME: &str = "MTL_Challenge.txt";

/// The header, without its newline.
pub const HEADER: &str = "image,valence,arousal,expression,aus";

/// Appends the row (with its newline) of frame `frame` (1-based) of `video`. Valence and
/// arousal are clamped to `[-1, 1]` and written as the shortest round-trip `f32` text; each AU
/// decision is its own field, `1` for a decision of 1 and `0` otherwise.
pub fn push_row(out: &mut String, video: &str, frame: usize, d: &FrameLine<'_>) {
    use std::fmt::Write;
    let [v, a] = super::submitted_va(d.va);
    let _ = write!(out, "{},{v},{a},{}", image_location(video, frame), d.expr);
    for &b in d.au {
        out.push_str(if b == 1 { ",1" } else { ",0" });
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aus_are_one_comma_separated_field_each() {
        let au = [0u8, 1, 1, 0];
        let d = FrameLine {
            va: [0.25, 1.5],
            au: &au,
            expr: 7,
        };
        let mut s = String::new();
        push_row(&mut s, "12-24-1920x1080", 120, &d);
        assert_eq!(s, "12-24-1920x1080/00120.jpg,0.25,1,7,0,1,1,0\n");
        assert_eq!(s.trim_end().split(',').count(), 4 + au.len());
    }

    #[test]
    fn twelve_aus_make_sixteen_fields() {
        let mut au = [0u8; 12];
        au[1] = 1;
        au[11] = 1;
        let d = FrameLine {
            va: [-0.5, 0.125],
            au: &au,
            expr: 3,
        };
        let mut s = String::new();
        push_row(&mut s, "video10_1_left", 1, &d);
        assert_eq!(
            s,
            "video10_1_left/00001.jpg,-0.5,0.125,3,0,1,0,0,0,0,0,0,0,0,0,1\n"
        );
        assert_eq!(s.trim_end().split(',').count(), 16);
    }
}
