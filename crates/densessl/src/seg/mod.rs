//! Segmentation: fine-tuning, evaluation and the metrics the field reports.

pub mod evaluate;
pub mod finetune;
pub mod loss;
pub mod metrics;
