//! The synthetic set: deterministic, indexable, and the index reproduces the generator's counts.

use mtanet_affwild2::{
    generate, DatasetIndex, IndexOptions, Layout, Split, SynthConfig, Task, Vocab,
};

fn small() -> SynthConfig {
    SynthConfig {
        videos: 12,
        frames: 30,
        seed: 5,
        full: false,
    }
}

#[test]
fn index_reproduces_synth_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = generate(dir.path(), &small()).unwrap();
    let index = DatasetIndex::load(dir.path(), &IndexOptions::default()).unwrap();
    assert_eq!(index.layout, Layout::Abaw2020);
    assert_eq!(index.vocab, Vocab::abaw2020());
    let stats = index.stats();
    for split in Split::ALL {
        let r = report.split(split);
        let s = match split {
            Split::Train => &stats.train,
            Split::Validation => &stats.validation,
        };
        assert_eq!(s.videos, r.videos, "{split}");
        for t in Task::ALL {
            let (rt, st) = (r.task(t), s.task(t));
            assert_eq!(st.videos, rt.videos, "{split} {t} videos");
            assert_eq!(st.frames, rt.annotation_lines, "{split} {t} lines");
            assert_eq!(st.labelled, rt.labelled, "{split} {t} labelled");
            assert_eq!(st.missing_jpg, rt.missing_jpg, "{split} {t} missing jpg");
            assert!(rt.labelled > 0, "{split} {t} has labels");
        }
        let hist: Vec<u64> = s
            .expr
            .expr_histogram
            .as_ref()
            .unwrap()
            .iter()
            .map(|(_, c)| *c)
            .collect();
        assert_eq!(hist, r.expr.counts, "{split} expression histogram");
        let rates = s.au.au_positive_rate.as_ref().unwrap();
        for (k, (_, rate)) in rates.iter().enumerate() {
            let expect = r.au.counts[k] as f64 / r.au.labelled as f64;
            assert!((rate - expect).abs() < 1e-12, "{split} AU {k}");
        }
        // Every sample has a jpg on disk and at least one label.
        for smp in index.samples(split) {
            assert!(smp.jpg.is_file(), "{}", smp.jpg.display());
            assert!(smp.va.is_some() || smp.au.is_some() || smp.expr.is_some());
        }
    }
    assert_eq!(stats.jpgs, report.jpgs_written);
    assert_eq!(stats.unannotated_jpgs, report.unannotated_jpgs);
    assert_eq!(stats.unannotated_videos, report.unannotated_videos);
    assert_eq!(
        stats.cross_task_overlap.videos, 0,
        "validation videos never train"
    );
    // Quirks present.
    let missing_jpg: u64 = Split::ALL
        .iter()
        .map(|&s| report.split(s).va.missing_jpg)
        .sum();
    assert!(missing_jpg > 0, "some frames have no jpg");
    let lines: u64 = Split::ALL
        .iter()
        .map(|&s| report.split(s).va.annotation_lines)
        .sum();
    let labelled: u64 = Split::ALL
        .iter()
        .map(|&s| report.split(s).va.labelled)
        .sum();
    assert!(labelled + missing_jpg < lines, "some VA rows are -5");
    // Crops are numbered from 1 in every folder, annotated or not: no `00000.jpg`.
    for v in std::fs::read_dir(dir.path().join("cropped_aligned")).unwrap() {
        let v = v.unwrap().path();
        assert!(!v.join("00000.jpg").exists(), "{}", v.display());
        let crops = mtanet_affwild2::list_crops(&v).unwrap();
        assert_eq!(crops.frames().first(), Some(&1), "{}", v.display());
    }
    // Strict mode rejects the unannotated (test) video folders.
    let strict = IndexOptions {
        strict: true,
        ..IndexOptions::default()
    };
    let e = DatasetIndex::load(dir.path(), &strict).unwrap_err();
    assert!(
        matches!(e, mtanet_affwild2::DataError::UnannotatedVideo { .. }),
        "{e}"
    );
}

#[test]
fn generation_is_deterministic_and_reruns_in_place() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        videos: 4,
        frames: 12,
        seed: 9,
        full: false,
    };
    let ra = generate(a.path(), &cfg).unwrap();
    let rb = generate(b.path(), &cfg).unwrap();
    assert_eq!(ra.train, rb.train);
    let ia = DatasetIndex::load(a.path(), &IndexOptions::default()).unwrap();
    let s = &ia.samples(Split::Train)[0];
    let rel = s.jpg.strip_prefix(a.path()).unwrap();
    assert_eq!(
        std::fs::read(&s.jpg).unwrap(),
        std::fs::read(b.path().join(rel)).unwrap()
    );
    let va = |d: &std::path::Path| {
        let p = d
            .join("annotations/VA_Set/Training_Set")
            .join(format!("{}.txt", s.video));
        std::fs::read(p).unwrap()
    };
    assert_eq!(va(a.path()), va(b.path()));
    // A second run into the same folder replaces the first.
    let again = generate(a.path(), &cfg).unwrap();
    assert_eq!(again.jpgs_written, ra.jpgs_written);
    // A folder with someone else's dataset is refused.
    let c = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(c.path().join("annotations")).unwrap();
    assert!(generate(c.path(), &cfg).is_err());
}
