//! Aff-Wild2 for MTANet: exact parsing of the ABAW 2020 (and 2021, 2022+) annotation layouts,
//! a frame index joining the three tasks, dataset statistics, a synthetic Aff-Wild2 whose faces
//! encode their labels, and a seeded, epoch-deterministic, prefetching batch loader.
//!
//! Data flows one way: files -> [`DatasetIndex`] -> [`Sample`]s -> [`Loader`] -> [`Batch`]es.
//! Not built on `candle-datasets`: it only offers an unshuffled `Batcher`.
#![warn(missing_docs)]

pub mod annotation;
pub mod augment;
pub mod batch;
pub mod crops;
pub mod decode;
pub mod error;
pub mod frame;
pub mod header_vocab;
pub mod index;
pub mod layout;
pub mod loader;
pub mod preprocess;
pub mod sampling;
pub mod stats;
pub mod synth;
pub mod task;
pub mod warp;

/// Seed derivation (the workspace's one copy, re-exported: the loader, sampler and synthetic
/// set draw from `seed::rng`).
pub use mtanet_seed as seed;

pub use annotation::{parse_annotation, AnnotationFile, Labels};
pub use augment::{Augment, AugmentDraw};
pub use batch::{Batch, SampleId};
pub use crops::{list_crops, Crops, MAX_FRAME};
pub use error::DataError;
pub use frame::load_frame;
pub use header_vocab::HeaderVocab;
pub use index::{CrossTaskOverlap, DatasetIndex, IndexOptions, Sample};
pub use layout::Layout;
pub use loader::{BatchIter, Loader, LoaderConfig, OnBadFrame};
pub use preprocess::Preprocess;
pub use sampling::Sampling;
pub use stats::{OverlapStats, SplitStats, Stats, TaskStats};
pub use synth::{generate, SynthConfig, SynthReport, SynthSplitReport, SynthTaskReport};
pub use task::{Split, Task, UnknownSplit, Vocab};
