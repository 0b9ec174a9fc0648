//! The face crops of one video, as predict and evaluate see them: listed once per folder
//! ([`mtanet_affwild2::list_crops`], memory per file), with a warning for stray files whose
//! frame number is too large to be a frame.

use std::path::Path;

use mtanet_affwild2::{list_crops, Crops, DataError, MAX_FRAME};

/// The crops of the video folder `dir` (none if it is missing). Files named like a crop but
/// numbered above [`MAX_FRAME`] are left out, with a warning naming the first and the count.
pub fn video_crops(dir: &Path) -> Result<Crops, DataError> {
    let crops = list_crops(dir)?;
    if let Some(first) = crops.ignored().first() {
        tracing::warn!(
            "{}: frame number above {MAX_FRAME}, ignored ({} such file(s) in {})",
            first.display(),
            crops.ignored().len(),
            dir.display()
        );
    }
    Ok(crops)
}
