//! Training machinery shared by pre-training and fine-tuning: run directories,
//! learning-rate schedules, checkpoints, progress bars and the pre-training loop.

pub mod checkpoint;
pub mod knn;
pub mod optim;
pub mod pretrain;
pub mod progress;
pub mod run_dir;
pub mod schedule;
pub mod state;
