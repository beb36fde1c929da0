//! swarm-train: training with candle on the CPU.
mod error;
mod model;

pub use error::{Result, TrainError};
pub use model::{masked_cross_entropy, TrainableLlama};
