//! CPU references of the dtype conversions: round to nearest, ties to even (the `half` crate,
//! IEEE 754's default rounding), for the tests.

/// The f16 bits nearest `v`.
pub fn to_f16_bits(v: f32) -> u16 {
    half::f16::from_f32(v).to_bits()
}

/// The f32 value of f16 bits (exact).
pub fn from_f16_bits(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

/// The bf16 bits nearest `v`.
pub fn to_bf16_bits(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

/// The f32 value of bf16 bits (exact).
pub fn from_bf16_bits(b: u16) -> f32 {
    half::bf16::from_bits(b).to_f32()
}
