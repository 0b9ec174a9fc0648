//! Columns and class indices are matched by name against the checkpoint's vocabulary: a root
//! whose headers list the same AUs or classes in another order gets each value under its own
//! name; other names are refused with both lists (rule 1).

use std::path::Path;

use super::child::{copy_tree, evaluate, fixture, predict, snapshot, unchanged};

/// Rewrites every `task` annotation file under `root` (any split) with `f(lines)`.
fn rewrite(root: &Path, task: &str, f: impl Fn(Vec<String>) -> Vec<String>) {
    let dir = root.join("annotations").join(task);
    for split in std::fs::read_dir(&dir).unwrap() {
        for file in std::fs::read_dir(split.unwrap().path()).unwrap() {
            let p = file.unwrap().path();
            let lines = std::fs::read_to_string(&p)
                .unwrap()
                .lines()
                .map(String::from)
                .collect();
            std::fs::write(&p, f(lines).join("\n") + "\n").unwrap();
        }
    }
}

/// Each line's comma-separated fields in reverse order.
fn reverse_fields(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .map(|l| l.split(',').rev().collect::<Vec<_>>().join(","))
        .collect()
}

/// The lines of the prediction file of `task` for the only validation video.
fn prediction_lines(pred: &Path, task: &str) -> Vec<String> {
    let dir = pred.join(task);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::read_to_string(files.pop().unwrap())
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn predict_writes_each_au_under_its_name_when_the_header_order_differs() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    copy_tree(&fx.root, &root);
    rewrite(&root, "AU_Set", reverse_fields);
    let before = snapshot(&[&fx.run_a, &fx.pred_a]);
    let out = tmp.path().join("out");
    predict(tmp.path(), &fx.run_a, &root, &out, &[]).succeeded();
    let want = reverse_fields(prediction_lines(&fx.pred_a, "AU_Set"));
    assert_eq!(prediction_lines(&out, "AU_Set"), want);
    assert_eq!(want[0], "AU25,AU20,AU15,AU12,AU6,AU4,AU2,AU1");
    for task in ["VA_Set", "EXPR_Set"] {
        assert_eq!(
            prediction_lines(&out, task),
            prediction_lines(&fx.pred_a, task)
        );
    }
    unchanged(&before, &[&fx.run_a, &fx.pred_a]);
}

#[test]
fn predict_writes_each_class_by_name_when_the_expression_order_differs() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    copy_tree(&fx.root, &root);
    // Classes rotated by one: the file's class k is the model's class k + 1 (mod 7).
    let model: Vec<String> = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise"
        .split(',')
        .map(String::from)
        .collect();
    let rotated: Vec<String> = (0..7).map(|k| model[(k + 1) % 7].clone()).collect();
    let file_index = |m: usize| (m + 6) % 7;
    rewrite(&root, "EXPR_Set", |lines| {
        let mut out = vec![rotated.join(",")];
        out.extend(lines.into_iter().skip(1).map(|l| match l.parse::<usize>() {
            Ok(m) => file_index(m).to_string(),
            Err(_) => l,
        }));
        out
    });
    let out = tmp.path().join("out");
    predict(tmp.path(), &fx.run_a, &root, &out, &[]).succeeded();
    let reference = prediction_lines(&fx.pred_a, "EXPR_Set");
    let written = prediction_lines(&out, "EXPR_Set");
    assert_eq!(written[0], rotated.join(","));
    assert_eq!(written.len(), reference.len());
    for (w, r) in written.iter().zip(&reference).skip(1) {
        let r: usize = r.parse().unwrap();
        assert_eq!(w, &file_index(r).to_string());
    }
    // Scored against the rotated annotations, it scores what the reference scores (the
    // per-class lines follow the header's order).
    let summary = |o: &super::child::Outcome| -> Vec<String> {
        o.succeeded()
            .stdout
            .lines()
            .filter(|l| !l.starts_with(' '))
            .map(String::from)
            .collect()
    };
    let a = summary(&evaluate(tmp.path(), &out, &root));
    let b = summary(&evaluate(tmp.path(), &fx.pred_a, &fx.root));
    assert!(a.iter().any(|l| l.starts_with("EXPR")), "{a:?}");
    assert_eq!(a, b);
}

#[test]
fn predict_refuses_a_root_naming_other_aus_with_both_lists() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    copy_tree(&fx.root, &root);
    rewrite(&root, "AU_Set", |mut lines| {
        lines[0] = lines[0].replace("AU12", "AU17");
        lines
    });
    let before = snapshot(&[&fx.run_a, &root]);
    let out = tmp.path().join("out");
    predict(tmp.path(), &fx.run_a, &root, &out, &[]).refused(&[
        "AU17",
        "AU12",
        &root.display().to_string(),
        "last.safetensors",
        "matched by name",
    ]);
    assert!(!out.join("AU_Set").exists());
    unchanged(&before, &[&fx.run_a, &root]);
}

#[test]
fn predict_refuses_a_root_naming_other_classes_with_both_lists() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    copy_tree(&fx.root, &root);
    rewrite(&root, "EXPR_Set", |mut lines| {
        lines[0] = lines[0].replace("Surprise", "Contempt");
        lines
    });
    let out = tmp.path().join("out");
    std::fs::create_dir_all(out.join("EXPR_Set")).unwrap();
    std::fs::write(out.join("EXPR_Set/earlier.txt"), b"an earlier result\n").unwrap();
    let before = snapshot(&[&fx.run_a, &root, &out]);
    predict(tmp.path(), &fx.run_a, &root, &out, &[]).refused(&[
        "Contempt",
        "Surprise",
        "expression classes",
    ]);
    unchanged(&before, &[&fx.run_a, &root, &out]);
}

#[test]
fn evaluate_scores_au_columns_in_another_order_by_name() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let pred = tmp.path().join("pred");
    copy_tree(&fx.pred_a, &pred);
    for e in std::fs::read_dir(pred.join("AU_Set")).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines = reverse_fields(text.lines().map(String::from).collect());
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    }
    let a = evaluate(tmp.path(), &pred, &fx.root);
    let b = evaluate(tmp.path(), &fx.pred_a, &fx.root);
    assert_eq!(
        a.succeeded().stdout,
        b.succeeded().stdout.replace(
            &fx.pred_a.display().to_string(),
            &pred.display().to_string()
        )
    );
}

#[test]
fn evaluate_refuses_a_prediction_naming_other_classes_with_file_line_and_both_lists() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let pred = tmp.path().join("pred");
    copy_tree(&fx.pred_a, &pred);
    let mut file = None;
    for e in std::fs::read_dir(pred.join("EXPR_Set")).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replacen("Surprise", "Contempt", 1)).unwrap();
        file = Some(p);
    }
    let file = file.unwrap();
    let before = snapshot(&[&pred, &fx.root]);
    evaluate(tmp.path(), &pred, &fx.root).refused(&[
        &format!("{}:1", file.display()),
        "Contempt",
        "Surprise",
    ]);
    unchanged(&before, &[&pred, &fx.root]);
}
