//! Numbers read from names and lists are bounded before they size anything (rule 6): frame
//! counts of a `--videos` list, a test video sized by its crops, a huge AU header, a crop
//! number beyond `u32`. Every case runs the binary and checks its own peak memory.

use std::ffi::OsStr;
use std::path::Path;

use super::child::{fixture, mtanet, snapshot, unchanged, Outcome};
use super::{good_tree, set_dir, write};

/// `predict` of `split` with a `--videos` list holding `list`.
fn predict_list(tmp: &Path, split: &str, list: &str) -> (Outcome, std::path::PathBuf) {
    let fx = fixture();
    let path = tmp.join("videos.txt");
    std::fs::write(&path, list).unwrap();
    let out = tmp.join("out");
    let o = mtanet(
        tmp,
        &[
            OsStr::new("predict"),
            "--checkpoint".as_ref(),
            fx.run_a.as_os_str(),
            "--root".as_ref(),
            fx.root.as_os_str(),
            "--split".as_ref(),
            split.as_ref(),
            "--videos".as_ref(),
            path.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
            "--quiet".as_ref(),
        ],
    );
    (o, out)
}

#[test]
fn a_listed_frame_count_beyond_u64_is_refused_with_its_line() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let before = snapshot(&[&fx.run_a, &fx.root]);
    let (o, out) = predict_list(
        tmp.path(),
        "Test",
        "# test videos\ntest_a,120\ntest_b,99999999999999999999999\n",
    );
    o.refused(&["videos.txt:3", "99999999999999999999999", "10000000"]);
    assert!(!out.join("VA_Set").exists());
    unchanged(&before, &[&fx.run_a, &fx.root]);
}

#[test]
fn a_listed_frame_count_above_the_frame_bound_is_refused_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, _) = predict_list(tmp.path(), "Validation_Set", "4-24-480x360,10000001\n");
    o.refused(&[
        "videos.txt:1",
        "10000001",
        "the most frames a video may have",
    ]);
}

#[test]
fn a_long_listed_video_is_written_in_memory_per_crop() {
    // Two million frames, none with a crop: written from one neutral output, a line at a
    // time (holding a frame's outputs per frame took about 500 MB here).
    let tmp = tempfile::tempdir().unwrap();
    let (o, out) = predict_list(tmp.path(), "Test", "no_such_video,2000000\n");
    o.succeeded();
    assert!(
        o.max_rss_kb < 200 * 1024,
        "peaked at {} MB",
        o.max_rss_kb / 1024
    );
    let va = std::fs::read_to_string(out.join("VA_Set/no_such_video.txt")).unwrap();
    assert_eq!(va.lines().count(), 2_000_001);
    assert_eq!(va.lines().nth(1_999_999), Some("0,0"));
}

#[test]
fn a_test_folder_with_only_a_stray_crop_number_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    good_tree(&root);
    let jpg = super::fixture("rgb_48x48.jpg");
    write(&root, "cropped_aligned/test_x/4294967297.jpg", &jpg);
    let fx = fixture();
    let o = mtanet(
        tmp.path(),
        &[
            OsStr::new("predict"),
            "--checkpoint".as_ref(),
            fx.run_a.as_os_str(),
            "--root".as_ref(),
            root.as_os_str(),
            "--split".as_ref(),
            "Test".as_ref(),
            "--out".as_ref(),
            tmp.path().join("out").as_os_str(),
            "--quiet".as_ref(),
        ],
    );
    o.refused(&["test video `test_x`", "no crops", "cropped_aligned/test_x"]);
    super::assert_names(&o.stderr, "4294967297.jpg");
}

/// Found here: an AU file reserved `lines x columns` bytes before reading a row (1.3 MB of
/// input below reserved 24 GB: an abort wherever the kernel refuses it), and the header's
/// repeated-name check was quadratic. `data stats` refuses it naming file and line, in little
/// memory.
#[test]
fn a_huge_au_header_is_refused_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    good_tree(&root);
    let header: Vec<String> = (1..=60_000).map(|i| format!("AU{i}")).collect();
    let mut text = header.join(",") + "\n";
    text.push_str(&"x\n".repeat(400_000));
    let big = write(
        &root,
        &format!("{}/good.txt", set_dir("AU", "Training")),
        text,
    );
    let o = mtanet(
        tmp.path(),
        &[
            OsStr::new("data"),
            "stats".as_ref(),
            "--root".as_ref(),
            root.as_os_str(),
        ],
    );
    o.refused(&[&format!("{}:2", big.display()), "expected 60000 fields"]);
    assert!(
        o.max_rss_kb < 200 * 1024,
        "peaked at {} MB",
        o.max_rss_kb / 1024
    );
}

/// Found here: a 0-byte crop named `4294967295.jpg` made the index allocate one `bool` per
/// frame number up to it (4 GiB). Crop numbers above `MAX_FRAME` are ignored.
#[test]
fn a_crop_numbered_at_u32_max_does_not_size_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    good_tree(&root);
    write(&root, "cropped_aligned/good/4294967295.jpg", b"");
    let o = mtanet(
        tmp.path(),
        &[
            OsStr::new("data"),
            "stats".as_ref(),
            "--root".as_ref(),
            root.as_os_str(),
        ],
    );
    o.succeeded();
    assert!(
        o.max_rss_kb < 200 * 1024,
        "peaked at {} MB",
        o.max_rss_kb / 1024
    );
    super::assert_names(&o.stdout, "jpgs: 3 in annotated videos");
}
