//! Formats are accepted whole or refused whole, and messages say where: a padded crop name is
//! refused by every reader naming the file, CR-only annotation files read as their LF twins, a
//! spreadsheet-saved CSV compares, a root without a split's annotations is named.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::child::{copy_tree, evaluate, fixture, mtanet, predict, snapshot, unchanged};

/// The synthetic root's only validation video.
const VAL_VIDEO: &str = "4-24-480x360";

/// `data stats --root ROOT`.
fn stats(cwd: &Path, root: &Path) -> super::child::Outcome {
    mtanet(
        cwd,
        &[
            OsStr::new("data"),
            "stats".as_ref(),
            "--root".as_ref(),
            root.as_os_str(),
        ],
    )
}

/// A copy of the synthetic root with the validation video's crop of frame 3 renamed to six
/// digits; returns the root and the renamed file.
fn root_with_padded_crop(tmp: &Path) -> (PathBuf, PathBuf) {
    let root = tmp.join("root");
    copy_tree(&fixture().root, &root);
    let dir = root.join("cropped_aligned").join(VAL_VIDEO);
    let padded = dir.join("000003.jpg");
    std::fs::rename(dir.join("00003.jpg"), &padded).unwrap();
    (root, padded)
}

#[test]
fn data_stats_refuses_a_six_digit_crop_name_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, padded) = root_with_padded_crop(tmp.path());
    let before = snapshot(&[&root]);
    stats(tmp.path(), &root).refused(&[
        &padded.display().to_string(),
        "not a crop name",
        "00003.jpg",
    ]);
    unchanged(&before, &[&root]);
}

#[test]
fn predict_and_evaluate_refuse_a_six_digit_crop_name_naming_the_file() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let (root, padded) = root_with_padded_crop(tmp.path());
    let before = snapshot(&[&root, &fx.pred_a, &fx.run_a]);
    let out = tmp.path().join("out");
    predict(tmp.path(), &fx.run_a, &root, &out, &[])
        .refused(&[&padded.display().to_string(), "not a crop name"]);
    assert!(!out.join("VA_Set").exists());
    evaluate(tmp.path(), &fx.pred_a, &root)
        .refused(&[&padded.display().to_string(), "not a crop name"]);
    unchanged(&before, &[&root, &fx.pred_a, &fx.run_a]);
}

#[test]
fn train_refuses_a_six_digit_crop_name_naming_the_file() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let (root, padded) = root_with_padded_crop(tmp.path());
    let config = tmp.path().join("c.yaml");
    let text = std::fs::read_to_string(fx.run_a.join("config.yaml")).unwrap();
    let results = tmp.path().join("results");
    std::fs::write(
        &config,
        format!(
            "defaults:\n{}",
            text.lines().map(|l| format!("  {l}\n")).collect::<String>()
        ),
    )
    .unwrap();
    let o = mtanet(
        tmp.path(),
        &[
            OsStr::new("train"),
            "--quiet".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--set".as_ref(),
            format!("data.root={}", root.display()).as_ref(),
            "--set".as_ref(),
            format!("results_dir={}", results.display()).as_ref(),
        ],
    );
    o.refused(&[&padded.display().to_string(), "not a crop name"]);
}

/// Rewrites every annotation file under `root` with CR-only line ends.
fn to_cr_only(root: &Path) {
    for task in std::fs::read_dir(root.join("annotations")).unwrap() {
        for split in std::fs::read_dir(task.unwrap().path()).unwrap() {
            for f in std::fs::read_dir(split.unwrap().path()).unwrap() {
                let p = f.unwrap().path();
                let text = std::fs::read_to_string(&p).unwrap();
                std::fs::write(&p, text.replace("\r\n", "\n").replace('\n', "\r")).unwrap();
            }
        }
    }
}

#[test]
fn cr_only_annotation_files_read_as_their_lf_twins() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    copy_tree(&fx.root, &root);
    to_cr_only(&root);
    let (cr, lf) = (stats(tmp.path(), &root), stats(tmp.path(), &fx.root));
    let lf_text = lf
        .succeeded()
        .stdout
        .replace(&fx.root.display().to_string(), &root.display().to_string());
    assert_eq!(cr.succeeded().stdout, lf_text);
    assert!(!cr.stdout.contains('\r'));
    let (cr, lf) = (
        evaluate(tmp.path(), &fx.pred_a, &root),
        evaluate(tmp.path(), &fx.pred_a, &fx.root),
    );
    let lf_text = lf
        .succeeded()
        .stdout
        .replace(&fx.root.display().to_string(), &root.display().to_string());
    assert_eq!(cr.succeeded().stdout, lf_text);
}

#[test]
fn compare_reads_a_csv_saved_by_a_spreadsheet() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("a.csv");
    let saved = tmp.path().join("b.csv");
    let text = "row,ccc_valence,au.f1,expr.f1\nresnet50,0.41,0.52,0.33\n";
    std::fs::write(&plain, text).unwrap();
    std::fs::write(
        &saved,
        format!("\u{feff}{}", text.replace('\n', "\r\n") + ",,,\r\n"),
    )
    .unwrap();
    let one = tmp.path().join("c.csv");
    std::fs::write(&one, text).unwrap();
    let args = |second: &Path| {
        [
            OsStr::new("compare").to_os_string(),
            plain.clone().into_os_string(),
            second.to_path_buf().into_os_string(),
        ]
    };
    let a = mtanet(tmp.path(), &args(&saved));
    let b = mtanet(tmp.path(), &args(&one));
    let (sa, sb) = (&a.succeeded().stdout, &b.succeeded().stdout);
    assert_eq!(sa.replace("b.csv", "c.csv"), *sb);
    assert!(sa.contains("resnet50"), "{sa}");
    // A short row is refused naming file and line.
    std::fs::write(&saved, "\u{feff}row,au.f1\r\nr1\r\n").unwrap();
    mtanet(tmp.path(), &args(&saved)).refused(&["b.csv:2", "1 fields"]);
}

#[test]
fn evaluate_on_a_root_without_the_split_names_the_root() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    copy_tree(&fx.root, &root);
    for task in ["VA_Set", "AU_Set", "EXPR_Set"] {
        let _ = std::fs::remove_dir_all(root.join("annotations").join(task).join("Validation_Set"));
    }
    let before = snapshot(&[&fx.pred_a]);
    evaluate(tmp.path(), &fx.pred_a, &root).refused(&[
        &root.display().to_string(),
        "no annotation files for the validation split",
    ]);
    unchanged(&before, &[&fx.pred_a]);
}
