//! The studies, shared by the CLI and the tests.

pub mod config;
pub mod gpt;
pub mod probes;
pub mod split_mnist;
pub mod summary;

pub use config::{ModelKind, Protocol, SplitMnistConfig, VitSettings};
