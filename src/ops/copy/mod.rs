//! In-place copies and per-step scalar logs on the device (training loops); WGSL in
//! `shaders/copy.wgsl`.

pub(crate) mod launch;
