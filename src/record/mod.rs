//! What a run leaves on disk: Parquet tables (see [`schema`]) and checkpoints.

pub mod checkpoint;
pub mod columns;
pub mod parquet;
pub mod schema;

pub use parquet::{TableWriter, Value, check_part, read_table, read_tables};
