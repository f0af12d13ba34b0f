//! densessl: self-supervised pre-training for dense prediction.
//!
//! The formulation kept visible in the code: an encoder f_θ ([`models::resnet`]); views
//! whose geometric relation to the source image is known exactly ([`views`]); a pretext
//! loss on f_θ(t1(x)), f_θ(t2(x)) ([`pretext`]); and a segmentation fine-tune that judges
//! the pretext task ([`seg`]).

#![warn(missing_docs)]

pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod experiment;
pub mod kernels;
mod error;
pub mod models;
pub mod npy;
pub mod plot;
pub mod pretext;
pub mod quickstart;
pub mod runtime;
pub mod seg;
pub mod train;
pub mod views;
pub mod weights;

pub use error::{Error, Result};
/// The `image` crate, re-exported so the binary names image types without its own dependency.
pub use image;
