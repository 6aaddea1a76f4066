//! Files: checkpoints (safetensors) and tabular data (CSV).

pub mod checkpoint;
pub mod csv;
