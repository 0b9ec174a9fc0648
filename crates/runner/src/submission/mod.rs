//! The ABAW prediction files, written by `mtanet predict`, read by `mtanet evaluate` and
//! checked by `mtanet submit validate` ([`validate`]), and the crop folders that decide which of
//! their frames the model saw. Formats: [`abaw2020`] (below), [`abaw2023`] (one file per
//! single-task track) and [`mtl`] (the multi-task track), chosen by [`SubmissionFormat`].
//!
//! Format (kuhnkeF `write_labelfile.py`, wtomin `test.py`): folders `VA_Set/`, `AU_Set/` and
//! `EXPR_Set/` under the prediction folder (the 2022+ names `VA_Estimation_Challenge`, ... are
//! read too), one `<video>.txt` per video and task, the annotation files' header
//! (`valence,arousal`; the AU names; the expression names), then one line per video frame:
//! `valence,arousal`, the 0/1 AU decisions, the expression index. Data line k is frame k,
//! exactly like the annotation files, so one parser ([`mtanet_affwild2::parse_annotation`])
//! reads both.

pub mod abaw2020;
pub mod abaw2023;
pub mod crops;
pub mod format;
pub mod mtl;
pub mod validate;

pub use abaw2020::{
    header_line, in_order_of, prediction_path, push_frame_line, read_prediction, read_task_file,
    submission_texts, FrameLine, PREDICTION_DIRS, TASK_DIRS,
};
pub use crops::video_crops;
pub use format::SubmissionFormat;

/// Valence and arousal as a prediction file holds them: clamped to the annotation range
/// `[-1, 1]` (`tanh` outputs already lie there; `model.head.va_activation: none` ones may
/// not). Training's evaluation and `tune` score these values, so `evaluate` on the written
/// predictions reproduces their figures.
pub fn submitted_va(va: [f32; 2]) -> [f32; 2] {
    va.map(|x| x.clamp(-1.0, 1.0))
}
