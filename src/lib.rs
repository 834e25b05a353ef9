//! optlab: a lab for studying how optimizers qualitatively change the solutions
//! networks converge to (rank of weights, sparsity of representations, forgetting).
//!
//! Data flows one way: `data` (verified files, task streams) → `models` on a
//! `backend` → `optim` step → `metrics` probes → `record` (Parquet, checkpoints).
//! `experiments` holds the protocols shared by the CLI and the tests.

pub mod backend;
pub mod data;
pub mod experiments;
pub mod linalg;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod optim;
pub mod random;
pub mod record;
