//! Encoders, heads, projectors and the matmul-based bilinear resize they share.

pub mod features;
pub mod heads;
pub mod projector;
pub mod resize;
pub mod resnet;
pub mod segmenter;
