//! From a resolved configuration or a run directory to runnable objects: the device, the data
//! root, loaders and their preprocessing, the model, and the one path from a checkpoint to a
//! model (used by resume, `predict` and `evaluate`).

pub mod data;
pub mod device;
pub mod model;
pub mod restore;
pub mod training_objects;
