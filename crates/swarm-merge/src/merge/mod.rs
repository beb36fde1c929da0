//! The classic merge methods, as mergekit defines them, streamed one tensor at a time.
//!
//! One file per method family; [`plan`] reads mergekit YAML, [`run`] executes a plan.

pub mod linear;
pub mod plan;
pub mod run;
mod simd;
pub mod slerp;
pub mod sparsify;
mod stream;
pub mod task_arithmetic;
mod trim;
