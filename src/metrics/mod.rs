//! Measurements of weights, activations and continual-learning accuracy.

mod activations;
mod continual;
mod spectra;

pub use activations::{class_mean_cosine, dead_unit_fraction, zero_fraction};
pub use continual::AccuracyMatrix;
pub use spectra::{Spectrum, spectrum};
