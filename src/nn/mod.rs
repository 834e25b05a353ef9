//! Layers with explicit backward passes. Forward caches what backward needs;
//! backward returns the input gradient and *accumulates* parameter gradients
//! into the store, so a layer used twice (or gradient accumulation) just works.

pub mod layernorm;
pub mod linear;

pub use layernorm::{LayerNorm, LayerNormCache};
pub use linear::Linear;
