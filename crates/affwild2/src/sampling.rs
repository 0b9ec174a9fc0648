//! Which samples go into which batch of an epoch: `mixed` (a seeded permutation of every
//! labelled frame) or `balanced` (a fixed per-task quota in every batch, drawn from per-task
//! pools, as wtomin's multitask trainer does for incomplete labels).

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::index::Sample;
use crate::seed;
use crate::task::Task;

/// How batches are composed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// Every frame with at least one label, once per epoch, in a seeded order.
    #[default]
    Mixed,
    /// Every batch holds at least `quota[t]` frames labelled for task t (quota = batch size
    /// split evenly over the tasks present); an epoch has as many batches as `mixed`, and each
    /// task's pool is cycled in a seeded order (reshuffled on every wrap).
    Balanced,
}

const TAG_ORDER: u64 = 0x0_0de5;
const TAG_POOL: u64 = 0x0_9001;

/// The sample positions of one epoch, cut into batches.
#[derive(Debug, Clone)]
pub(crate) struct EpochPlan {
    pub order: Vec<usize>,
    pub batch_size: usize,
    pub batches: usize,
}

impl EpochPlan {
    /// Sample indices of batch `b` (the last one may be shorter in `mixed` without drop_last).
    pub fn batch(&self, b: usize) -> &[usize] {
        let start = (b * self.batch_size).min(self.order.len());
        let end = ((b + 1) * self.batch_size).min(self.order.len());
        &self.order[start..end]
    }
}

/// Builds epoch plans; owns the per-task pools and quotas.
#[derive(Debug, Clone)]
pub(crate) struct Planner {
    n: usize,
    pools: [Vec<usize>; 3],
    quotas: [usize; 3],
    sampling: Sampling,
    shuffle: bool,
    drop_last: bool,
    batch_size: usize,
    seed: u64,
}

impl Planner {
    pub fn new(
        samples: &[Sample],
        sampling: Sampling,
        shuffle: bool,
        drop_last: bool,
        batch_size: usize,
        seed: u64,
    ) -> Self {
        let pools: [Vec<usize>; 3] =
            Task::ALL.map(|t| (0..samples.len()).filter(|&i| samples[i].has(t)).collect());
        let active: Vec<usize> = (0..3).filter(|&t| !pools[t].is_empty()).collect();
        let mut quotas = [0usize; 3];
        if !active.is_empty() {
            for (k, &t) in active.iter().enumerate() {
                quotas[t] = batch_size / active.len() + usize::from(k < batch_size % active.len());
            }
        }
        Planner {
            n: samples.len(),
            pools,
            quotas,
            sampling,
            shuffle,
            drop_last,
            batch_size,
            seed,
        }
    }

    /// Per-task quota (VA, AU, EXPR) of `balanced` batches.
    pub fn quotas(&self) -> [usize; 3] {
        self.quotas
    }

    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.n / self.batch_size
        } else {
            self.n.div_ceil(self.batch_size)
        }
    }

    pub fn plan(&self, epoch: u64) -> EpochPlan {
        let batches = self.batches_per_epoch();
        let order = match self.sampling {
            Sampling::Mixed => {
                let mut order: Vec<usize> = (0..self.n).collect();
                if self.shuffle {
                    order.shuffle(&mut seed::rng(&[self.seed, epoch, TAG_ORDER]));
                }
                order.truncate(batches * self.batch_size);
                order
            }
            Sampling::Balanced => {
                let mut streams: Vec<(usize, Vec<usize>)> = Task::ALL
                    .iter()
                    .map(|t| {
                        let q = self.quotas[t.index()];
                        (q, self.stream(*t, epoch, q * batches))
                    })
                    .collect();
                let mut order = Vec::with_capacity(batches * self.batch_size);
                for b in 0..batches {
                    for (q, s) in streams.iter_mut() {
                        order.extend_from_slice(&s[b * *q..(b + 1) * *q]);
                    }
                }
                streams.clear();
                order
            }
        };
        EpochPlan {
            order,
            batch_size: self.batch_size,
            batches,
        }
    }

    /// `len` draws from task t's pool: seeded permutations, one per wrap.
    fn stream(&self, task: Task, epoch: u64, len: usize) -> Vec<usize> {
        let pool = &self.pools[task.index()];
        let mut out = Vec::with_capacity(len);
        let mut cycle = 0u64;
        while out.len() < len && !pool.is_empty() {
            let mut p = pool.clone();
            if self.shuffle {
                p.shuffle(&mut seed::rng(&[
                    self.seed,
                    epoch,
                    TAG_POOL,
                    task.index() as u64,
                    cycle,
                ]));
            }
            let take = (len - out.len()).min(p.len());
            out.extend_from_slice(&p[..take]);
            cycle += 1;
        }
        out
    }
}
