//! Segmentation: fine-tuning, evaluation and the metrics the field reports.

pub mod augment;
pub mod evaluate;
pub mod inference;
pub mod finetune;
pub mod loss;
pub mod metrics;
pub mod protocol;
