//! CPU linear algebra: GEMM, singular values, symmetric eigen, Newton-Schulz, inverse roots, eigenbases.

mod eigen;
mod gemm;
mod newton_schulz;
mod svd;

pub use eigen::{DampedRoot, Epsilon, damped_inverse, sym_eigenvectors, sym_inverse_root};
pub use gemm::matmul;
pub use newton_schulz::{NORM_EPS as NS_NORM_EPS, NsCoefficients, newton_schulz};
pub use svd::singular_values;
