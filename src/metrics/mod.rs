//! Measurements of weights, activations and continual-learning accuracy.

mod activations;
mod continual;
mod spectra;
mod stats;

pub use activations::{
    NEAR_ZERO, class_mean_cosine, covariance, dead_unit_fraction, near_zero_fraction, representation_effective_rank, sparsity,
    zero_fraction,
};
pub use continual::AccuracyMatrix;
pub use spectra::{Spectrum, spectrum};
pub use stats::{Interval, student_t_quantile};
