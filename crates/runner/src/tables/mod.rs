//! Result tables: Table I (and any experiment file's rows), `compare`, and the mean, standard
//! deviation and 95% interval over seeds.

pub mod compare;
pub mod experiment_table;
pub mod seed_summary;
