//! The ABAW 2023+ single-task files: one file per track under the prediction folder
//! ([`TRACK_FILES`]), header `image_location,` then the 2020 header of the task
//! (`valence,arousal`; the AU names; the expression names), then one row per video frame:
//! `video/00001.jpg,` then the task's 2020 data line (valence and arousal; the 0/1 AU
//! decisions; the expression index).

use mtanet_affwild2::{Task, Vocab};

use super::abaw2020::{self, FrameLine};

/// The first column's name.
pub const LOCATION: &str = "image_location";

/// The file of each track, in task order (VA, AU, EXPR).
pub const TRACK_FILES: [(Task, &str); 3] = [
    (Task::Va, "VA_Estimation_Challenge.txt"),
    (Task::Au, "AU_Detection_Challenge.txt"),
    (Task::Expr, "EXPR_Classification_Challenge.txt"),
];

/// The header line (with its newline) of `task`'s file, e.g. `image_location,valence,arousal`.
pub fn header_line(task: Task, vocab: &Vocab) -> String {
    format!("{LOCATION},{}", abaw2020::header_line(task, vocab))
}

/// The `image_location` of frame `frame` (1-based) of `video`: `video/00001.jpg`.
pub fn image_location(video: &str, frame: usize) -> String {
    format!("{video}/{frame:05}.jpg")
}

/// The video and frame of an `image_location` in exactly the form [`image_location`] writes
/// (`video/00001.jpg`: the frame zero-padded to five digits), if it is one. The same frame in
/// another form (`video/7.jpg`, `video/000007.jpg`) is not: the organisers' sample file and
/// their scoring name each frame in the five-digit form.
pub fn parse_image_location(s: &str) -> Option<(&str, u32)> {
    loose_image_location(s).filter(|&(video, f)| image_location(video, f as usize) == s)
}

/// The video and frame of `video/<digits>.jpg` with any zero padding (`v/7.jpg`,
/// `v/000007.jpg`), for saying which frame a location in another form meant.
pub(crate) fn loose_image_location(s: &str) -> Option<(&str, u32)> {
    let (video, file) = s.rsplit_once('/')?;
    let digits = file.strip_suffix(".jpg")?;
    if video.is_empty() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(|f| (video, f))
}

/// Appends the row (with its newline) of frame `frame` (1-based) of `video` in `task`'s file.
pub fn push_row(out: &mut String, task: Task, video: &str, frame: usize, d: &FrameLine<'_>) {
    out.push_str(&image_location(video, frame));
    out.push(',');
    abaw2020::push_frame_line(out, task, d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_start_with_the_image_location() {
        let v = Vocab {
            au_names: vec!["AU1".into(), "AU2".into()],
            expr_names: vec!["Neutral".into(), "Other".into()],
        };
        assert_eq!(header_line(Task::Au, &v), "image_location,AU1,AU2\n");
        assert_eq!(
            header_line(Task::Expr, &v),
            "image_location,Neutral,Other\n"
        );
        let au = [0u8, 1];
        let d = FrameLine {
            va: [0.5, -2.0],
            au: &au,
            expr: 1,
        };
        let mut s = String::new();
        push_row(&mut s, Task::Va, "v_left", 7, &d);
        push_row(&mut s, Task::Au, "v_left", 7, &d);
        push_row(&mut s, Task::Expr, "v_left", 7, &d);
        assert_eq!(
            s,
            "v_left/00007.jpg,0.5,-1\nv_left/00007.jpg,0,1\nv_left/00007.jpg,1\n"
        );
        assert_eq!(
            parse_image_location("v_left/00007.jpg"),
            Some(("v_left", 7))
        );
        assert_eq!(
            parse_image_location("122-60-1920x1080-3_right/123456.jpg"),
            Some(("122-60-1920x1080-3_right", 123456))
        );
        for bad in [
            "v_left/7.jpg",
            "v_left/0007.jpg",
            "v_left/000007.jpg",
            "v_left/0123456.jpg",
            "v_left/7.png",
            "00007.jpg",
            "/00007.jpg",
            "v/x1.jpg",
            "v/.jpg",
        ] {
            assert_eq!(parse_image_location(bad), None, "{bad}");
        }
        assert_eq!(loose_image_location("v_left/7.jpg"), Some(("v_left", 7)));
        assert_eq!(
            loose_image_location("v_left/000007.jpg"),
            Some(("v_left", 7))
        );
    }
}
