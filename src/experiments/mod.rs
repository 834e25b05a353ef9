//! The studies, shared by the CLI and the tests: one driver ([`study`]) and one
//! trainer ([`trainer`]) under every study kind ([`split_mnist`], [`gpt`]).

pub mod config;
pub mod figures;
pub mod folder;
pub mod gpt;
pub mod memory;
pub mod probes;
pub mod provenance;
pub mod records;
pub mod report;
pub mod slurm;
pub mod split_mnist;
pub mod study;
pub mod summary;
pub mod sweep;
pub mod trainer;

pub use config::{ModelKind, Protocol, SplitMnistConfig, StudyConfig, VitSettings};
