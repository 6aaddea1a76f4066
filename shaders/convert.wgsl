// dtype conversions between f32 and the 16-bit float types, bit-exact and the same on every
// backend: integer arithmetic only (WGSL's pack2x16float leaves rounding and overflow to the
// implementation; a float load may flush subnormals). Rounding is to nearest, ties to even;
// overflow gives infinity; NaN becomes a quiet NaN with the top payload bits (signalling
// NaNs are quieted, as IEEE 754 conversions do).
// 16-bit tensors hold two elements per u32, element 2i in the low half.

const WG: u32 = 256u;

struct Convert {
    n: u32,    // elements
    src: u32,  // 0 f16, 1 bf16 (half_to_*)
    dst: u32,  // 0 f16, 1 bf16 (*_to_half)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Convert;
@group(0) @binding(1) var<storage, read> src: array<u32>;        // (n) f32 bits or (ceil(n / 2)) half pairs
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;  // (ceil(n / 2)) half pairs or (n) f32 bits

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

fn f32_to_f16(x: u32) -> u32 {
    let sign = (x >> 16u) & 0x8000u;
    let e = i32((x >> 23u) & 0xffu);
    let m = x & 0x7fffffu;
    if e == 255 {
        if m != 0u { return sign | 0x7e00u | (m >> 13u); } // quiet NaN
        return sign | 0x7c00u;                              // infinity
    }
    let he = e - 112; // f16 exponent field (bias 15 against f32's 127)
    if he >= 31 { return sign | 0x7c00u; }
    if he <= 0 {
        // Subnormal (or zero): (1.m * 2^23) >> (14 - he), rounded.
        if he < -10 { return sign; }
        let full = m | 0x800000u;
        let s = u32(14 - he);
        let rem = full & ((1u << s) - 1u);
        let halfway = 1u << (s - 1u);
        var q = full >> s;
        if rem > halfway || (rem == halfway && (q & 1u) == 1u) { q += 1u; }
        return sign | q; // q == 0x400 is the smallest normal, encoded correctly
    }
    // Normal: round 23 mantissa bits to 10; a carry moves into the exponent (up to infinity).
    let r = m + 0xfffu + ((m >> 13u) & 1u);
    return sign | ((u32(he) << 10u) + (r >> 13u));
}

fn f16_to_f32(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if e == 0u {
        if m == 0u { return sign; }
        // Subnormal m * 2^-24: normalise on the leading bit.
        let b = firstLeadingBit(m);
        return sign | ((b + 103u) << 23u) | ((m << (23u - b)) & 0x7fffffu);
    }
    if e == 31u {
        if m != 0u { return sign | 0x7fc00000u | (m << 13u); } // NaN, quieted (as IEEE widening)
        return sign | 0x7f800000u;
    }
    return sign | ((e + 112u) << 23u) | (m << 13u);
}

fn f32_to_bf16(x: u32) -> u32 {
    if (x & 0x7fffffffu) > 0x7f800000u { return (x >> 16u) | 0x40u; } // quiet NaN
    return (x + 0x7fffu + ((x >> 16u) & 1u)) >> 16u;
}

fn to_half(kind: u32, x: u32) -> u32 {
    if kind == 0u { return f32_to_f16(x); }
    return f32_to_bf16(x);
}

fn from_half(kind: u32, h: u32) -> u32 {
    if kind == 0u { return f16_to_f32(h); }
    if (h & 0x7fffu) > 0x7f80u { return (h | 0x40u) << 16u; } // NaN, quieted
    return h << 16u;
}

// One invocation per output word: elements 2i and 2i + 1 (the odd tail's high half is 0).
@compute @workgroup_size(WG)
fn f32_to_half(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if 2u * i >= p.n { return; }
    let lo = to_half(p.dst, src[2u * i]);
    var hi = 0u;
    if 2u * i + 1u < p.n { hi = to_half(p.dst, src[2u * i + 1u]); }
    dst[i] = lo | (hi << 16u);
}

// One invocation per input word.
@compute @workgroup_size(WG)
fn half_to_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if 2u * i >= p.n { return; }
    let w = src[i];
    dst[2u * i] = from_half(p.src, w & 0xffffu);
    if 2u * i + 1u < p.n { dst[2u * i + 1u] = from_half(p.src, w >> 16u); }
}

// f16 <-> bf16 through f32 (exact), so one rounding.
@compute @workgroup_size(WG)
fn half_to_half(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if 2u * i >= p.n { return; }
    let w = src[i];
    let lo = to_half(p.dst, from_half(p.src, w & 0xffffu));
    var hi = 0u;
    if 2u * i + 1u < p.n { hi = to_half(p.dst, from_half(p.src, w >> 16u)); }
    dst[i] = lo | (hi << 16u);
}
