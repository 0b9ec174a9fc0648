//! The batch loader: a background thread per epoch builds batches (rayon decode + augment +
//! normalise into one buffer) and keeps at most `prefetch` of them ready in a bounded channel.
//!
//! Determinism: the plan of an epoch depends on (seed, epoch); the augmentation of the sample
//! at position p of the plan comes from an RNG seeded by (seed, epoch, p). Nothing depends on
//! thread count or scheduling, and `epoch(e, b)` yields exactly the tail of `epoch(e, 0)`.
//!
//! Bad frames: a frame that cannot be read or decoded is recorded (see [`Loader::bad_frames`]
//! and [`Batch::dropped`]). With `OnBadFrame::Skip` (training) it is replaced by the next
//! decodable sample of the epoch plan (up to 16 tries, deterministic), which keeps its
//! position's augmentation RNG; the batch keeps its size and `ids` name the frames actually
//! used. With `OnBadFrame::Drop` (evaluation) its row is left out: the batch has one row fewer
//! and every frame of the plan is in at most one row, with its own crop. With
//! `OnBadFrame::Error` the batch is an `Err` naming the path and the epoch ends there. A wrong
//! image size with `resize: false` is always an `Err`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use crossbeam_channel::{bounded, Receiver};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{Augment, AugmentDraw};
use crate::batch::{Batch, SampleId};
use crate::error::DataError;
use crate::frame::load_frame;
use crate::index::Sample;
use crate::preprocess::Preprocess;
use crate::sampling::{EpochPlan, Planner, Sampling};
use crate::seed;
use crate::task::{Task, Vocab};

/// What the loader does with a crop it cannot read or decode. The serialised forms (the
/// `data.on_bad_frame` setting) are `skip` and `error`; `Drop` is what `skip` means for an
/// evaluation loader, set by the code that builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBadFrame {
    /// Record it and substitute the next decodable sample of the epoch (batch size kept): for
    /// training, where the substitute is one more training example.
    #[default]
    Skip,
    /// Record it and leave its row out of the batch (one row fewer; a batch whose every crop
    /// is bad has no rows): for evaluation and prediction, where a substitute would score or
    /// name another frame's output twice.
    #[serde(skip)]
    Drop,
    /// Yield an `Err` naming the file and end the epoch.
    Error,
}

/// Loader settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Rows per batch.
    pub batch_size: usize,
    /// Side of the square network input (112 for Aff-Wild2 crops).
    pub image_size: usize,
    /// `mixed` or `balanced` batches.
    pub sampling: Sampling,
    /// Seeded shuffling per epoch (off: index order).
    pub shuffle: bool,
    /// Drop a last, incomplete batch.
    pub drop_last: bool,
    /// Seed of every random choice (order, pools, augmentation).
    pub seed: u64,
    /// Batches kept ready by the background thread (at least 1).
    pub prefetch: usize,
    /// Decode threads; 0 = rayon's default (all cores).
    pub threads: usize,
    /// Training augmentation; `None` in evaluation.
    pub augment: Option<Augment>,
    /// Normalisation of the backbone.
    pub preprocess: Preprocess,
    /// Substitute, drop or stop on an unreadable crop.
    pub on_bad_frame: OnBadFrame,
    /// Resize crops of another size (true) or reject them (false).
    pub resize: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 32,
            image_size: 112,
            sampling: Sampling::Mixed,
            shuffle: true,
            drop_last: false,
            seed: 0,
            prefetch: 2,
            threads: 0,
            augment: None,
            preprocess: Preprocess::imagenet(),
            on_bad_frame: OnBadFrame::Skip,
            resize: true,
        }
    }
}

/// How many later plan positions are tried in place of a bad frame.
const MAX_SUBSTITUTES: usize = 16;
const TAG_AUGMENT: u64 = 0xa06;

struct Inner {
    samples: Vec<Sample>,
    n_au: usize,
    cfg: LoaderConfig,
    planner: Planner,
    pool: rayon::ThreadPool,
    bad: Mutex<BTreeSet<PathBuf>>,
}

/// Shuffling, parallel, prefetching batch loader over a list of samples.
#[derive(Clone)]
pub struct Loader {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("samples", &self.inner.samples.len())
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

impl Loader {
    /// Checks the configuration and samples (AU rows must match `vocab`, expressions must be
    /// in range) and drops samples without any label.
    pub fn new(
        samples: Vec<Sample>,
        vocab: &Vocab,
        cfg: LoaderConfig,
    ) -> Result<Loader, DataError> {
        if cfg.batch_size == 0 || cfg.image_size == 0 {
            return Err(DataError::Config(format!(
                "batch_size ({}) and image_size ({}) must be positive",
                cfg.batch_size, cfg.image_size
            )));
        }
        cfg.preprocess.validate().map_err(DataError::Config)?;
        if let Some(a) = &cfg.augment {
            a.validate().map_err(DataError::Config)?;
        }
        let n_au = vocab.au_names.len();
        let n_expr = vocab.expr_names.len();
        for s in &samples {
            let id = SampleId {
                video: s.video.clone(),
                frame: s.frame,
            };
            if let Some(au) = &s.au {
                if au.len() != n_au || au.iter().any(|&v| v > 1) {
                    return Err(DataError::Config(format!(
                        "sample {id}: {} AU values, the vocabulary has {n_au} (values must be 0/1)",
                        au.len()
                    )));
                }
            }
            if s.expr.is_some_and(|e| e as usize >= n_expr) {
                return Err(DataError::Config(format!(
                    "sample {id}: expression {:?} outside the {n_expr} classes",
                    s.expr
                )));
            }
            if s.va.is_some_and(|v| !v.iter().all(|x| x.is_finite())) {
                return Err(DataError::Config(format!("sample {id}: non-finite VA")));
            }
        }
        let samples: Vec<Sample> = samples
            .into_iter()
            .filter(|s| Task::ALL.iter().any(|&t| s.has(t)))
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .thread_name(|i| format!("affwild2-decode-{i}"))
            .build()
            .map_err(|e| DataError::Config(format!("decode thread pool: {e}")))?;
        let planner = Planner::new(
            &samples,
            cfg.sampling,
            cfg.shuffle,
            cfg.drop_last,
            cfg.batch_size,
            cfg.seed,
        );
        Ok(Loader {
            inner: Arc::new(Inner {
                samples,
                n_au,
                cfg,
                planner,
                pool,
                bad: Mutex::new(BTreeSet::new()),
            }),
        })
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.inner.planner.batches_per_epoch()
    }

    /// Samples the loader draws from (those with at least one label).
    pub fn len(&self) -> usize {
        self.inner.samples.len()
    }

    /// True if there is nothing to load.
    pub fn is_empty(&self) -> bool {
        self.inner.samples.is_empty()
    }

    /// The samples the loader draws from.
    pub fn samples(&self) -> &[Sample] {
        &self.inner.samples
    }

    /// Minimum rows per task (VA, AU, EXPR) in every `balanced` batch.
    pub fn quotas(&self) -> [usize; 3] {
        self.inner.planner.quotas()
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.inner.cfg
    }

    /// Crops that failed to read or decode so far (substituted in `Skip` mode, left out in
    /// `Drop` mode), sorted.
    pub fn bad_frames(&self) -> Vec<PathBuf> {
        match self.inner.bad.lock() {
            Ok(g) => g.iter().cloned().collect(),
            Err(p) => p.into_inner().iter().cloned().collect(),
        }
    }

    /// The batches of `epoch` from batch `start_batch` on (earlier ones are skipped without
    /// decoding, for exact resume). Built on a background thread, `prefetch` batches ahead.
    pub fn epoch(&self, epoch: u64, start_batch: usize) -> BatchIter {
        let (tx, rx) = bounded(self.inner.cfg.prefetch.max(1));
        let inner = Arc::clone(&self.inner);
        let handle = std::thread::Builder::new()
            .name(format!("affwild2-loader-e{epoch}"))
            .spawn(move || {
                let plan = inner.planner.plan(epoch);
                for b in start_batch..plan.batches {
                    let batch = inner.build(&plan, epoch, b);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                }
            });
        match handle {
            Ok(h) => BatchIter {
                rx: Some(rx),
                handle: Some(h),
                failed: None,
            },
            Err(e) => BatchIter {
                rx: None,
                handle: None,
                failed: Some(DataError::Config(format!(
                    "cannot start the loader thread: {e}"
                ))),
            },
        }
    }

    /// Builds batch `b` of `epoch` on the calling thread (what the background thread does).
    pub fn batch(&self, epoch: u64, b: usize) -> Result<Batch, DataError> {
        let plan = self.inner.planner.plan(epoch);
        if b >= plan.batches {
            return Err(DataError::Config(format!(
                "batch {b} >= {} batches per epoch",
                plan.batches
            )));
        }
        self.inner.build(&plan, epoch, b)
    }
}

impl Inner {
    fn record_bad(&self, path: &std::path::Path) {
        let mut g = match self.bad.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.insert(path.to_path_buf());
    }

    /// Decodes and transforms the sample at plan position `pos` into `out`; returns the index
    /// of the sample used (a substitute in `Skip` mode), or its bad crop in `Drop` mode.
    fn load_position(
        &self,
        plan: &EpochPlan,
        epoch: u64,
        pos: usize,
        out: &mut [f32],
    ) -> Result<Loaded, DataError> {
        let cfg = &self.cfg;
        let mut rng = seed::rng(&[cfg.seed, epoch, TAG_AUGMENT, pos as u64]);
        let mut first_err = None;
        let substitutes = match cfg.on_bad_frame {
            OnBadFrame::Skip => MAX_SUBSTITUTES.min(plan.order.len().saturating_sub(1)),
            OnBadFrame::Drop | OnBadFrame::Error => 0,
        };
        for k in 0..=substitutes {
            let idx = plan.order[(pos + k) % plan.order.len()];
            let path = &self.samples[idx].jpg;
            let draw = |w, h| match &cfg.augment {
                Some(a) => a.draw(&mut rng, w, h),
                None => AugmentDraw::identity(w, h),
            };
            match load_frame(path, cfg.image_size, cfg.resize, &cfg.preprocess, draw, out) {
                Ok(()) => return Ok(Loaded::Sample(idx)),
                Err(e @ DataError::ImageSize { .. }) => return Err(e),
                Err(e) => {
                    self.record_bad(path);
                    match cfg.on_bad_frame {
                        OnBadFrame::Error => return Err(e),
                        OnBadFrame::Drop => return Ok(Loaded::Dropped(path.clone())),
                        OnBadFrame::Skip => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
            }
        }
        Err(first_err.unwrap_or_else(|| DataError::Config("empty epoch plan".into())))
    }

    fn build(&self, plan: &EpochPlan, epoch: u64, b: usize) -> Result<Batch, DataError> {
        let positions: Vec<usize> =
            (b * plan.batch_size..b * plan.batch_size + plan.batch(b).len()).collect();
        let n = positions.len();
        let s = self.cfg.image_size;
        let per = 3 * s * s;
        let mut images = vec![0f32; n * per];
        let loaded: Vec<Result<Loaded, DataError>> = self.pool.install(|| {
            images
                .par_chunks_mut(per)
                .zip(positions.par_iter())
                .map(|(out, &pos)| self.load_position(plan, epoch, pos, out))
                .collect()
        });
        let loaded = loaded.into_iter().collect::<Result<Vec<Loaded>, _>>()?;
        let mut used = Vec::with_capacity(n);
        let mut dropped = Vec::new();
        for (row, l) in loaded.into_iter().enumerate() {
            match l {
                Loaded::Sample(idx) => {
                    // Rows move up over the dropped ones, keeping plan order.
                    let to = used.len();
                    if to != row {
                        images.copy_within(row * per..(row + 1) * per, to * per);
                    }
                    used.push(idx);
                }
                Loaded::Dropped(path) => dropped.push(path),
            }
        }
        let n = used.len();
        images.truncate(n * per);
        let k = self.n_au;
        let mut va = vec![0f32; n * 2];
        let mut va_mask = vec![0f32; n];
        let mut au = vec![0f32; n * k];
        let mut au_mask = vec![0f32; n];
        let mut expr = vec![0u32; n];
        let mut expr_mask = vec![0f32; n];
        let mut ids = Vec::with_capacity(n);
        for (i, &idx) in used.iter().enumerate() {
            let smp = &self.samples[idx];
            if let Some(v) = smp.va {
                va[2 * i..2 * i + 2].copy_from_slice(&v);
                va_mask[i] = 1.0;
            }
            if let Some(a) = &smp.au {
                for (dst, &x) in au[i * k..(i + 1) * k].iter_mut().zip(a) {
                    *dst = x as f32;
                }
                au_mask[i] = 1.0;
            }
            if let Some(e) = smp.expr {
                expr[i] = e as u32;
                expr_mask[i] = 1.0;
            }
            ids.push(SampleId {
                video: smp.video.clone(),
                frame: smp.frame,
            });
        }
        let dev = Device::Cpu;
        Ok(Batch {
            images: Tensor::from_vec(images, (n, 3, s, s), &dev)?,
            va: Tensor::from_vec(va, (n, 2), &dev)?,
            va_mask: Tensor::from_vec(va_mask, n, &dev)?,
            au: Tensor::from_vec(au, (n, k), &dev)?,
            au_mask: Tensor::from_vec(au_mask, n, &dev)?,
            expr: Tensor::from_vec(expr, n, &dev)?,
            expr_mask: Tensor::from_vec(expr_mask, n, &dev)?,
            ids,
            dropped,
        })
    }
}

/// What one plan position of a batch became.
enum Loaded {
    /// The row holds this sample (the position's own, or its substitute in `Skip` mode).
    Sample(usize),
    /// `Drop` mode: the position's crop could not be read or decoded; it has no row.
    Dropped(PathBuf),
}

/// The batches of one epoch, produced by a background thread. Dropping it stops the thread
/// after the batch in progress.
pub struct BatchIter {
    rx: Option<Receiver<Result<Batch, DataError>>>,
    handle: Option<JoinHandle<()>>,
    failed: Option<DataError>,
}

impl Iterator for BatchIter {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        let rx = self.rx.as_ref()?;
        match rx.recv() {
            Ok(item) => Some(item),
            Err(_) => {
                // The producer finished (or died): a panic must not look like a short epoch.
                self.rx = None;
                let h = self.handle.take()?;
                match h.join() {
                    Ok(()) => None,
                    Err(p) => {
                        let msg = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into());
                        Some(Err(DataError::Config(format!(
                            "loader thread panicked: {msg}"
                        ))))
                    }
                }
            }
        }
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        self.rx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
