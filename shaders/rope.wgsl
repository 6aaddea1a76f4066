// Rotary position embeddings, Hugging Face's `rotate_half` convention, on (B, H, T, D) heads:
// element i < D/2 of a row pairs with element i + D/2,
//   y[i]       = x[i] * cos - x[i + D/2] * sin
//   y[i + D/2] = x[i + D/2] * cos + x[i] * sin
// with cos, sin of angle (offset + t) * inv_freq[i] read from tables the host computed
// (src/ops/rope/mod.rs). The backward is the inverse rotation: the same kernel with sign = -1.
// One invocation per pair (or per 4 pairs, vec4 loads, when D/2 % 4 == 0).

const WG: u32 = 256u;

struct Rope {
    n: u32,       // units: B * H * T * D/2 pairs (or a quarter of that in rope4)
    t: u32,       // rows per (b, h)
    half: u32,    // D / 2 in units (pairs, or vec4s of pairs in rope4)
    offset: u32,  // position of row 0 (decode: the cache length before the new rows)
    sign: f32,    // 1: rotate; -1: rotate back (the backward)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> rp: Rope;
@group(0) @binding(1) var<storage, read> rx: array<f32>;            // (B, H, T, D)
@group(0) @binding(2) var<storage, read> rcos: array<f32>;          // (max_positions, D/2)
@group(0) @binding(3) var<storage, read> rsin: array<f32>;          // (max_positions, D/2)
@group(0) @binding(4) var<storage, read_write> ry: array<f32>;      // (B, H, T, D)
@group(0) @binding(1) var<storage, read> rx4: array<vec4<f32>>;       // (B, H, T, D / 4)
@group(0) @binding(2) var<storage, read> rcos4: array<vec4<f32>>;     // (max_positions, D/8)
@group(0) @binding(3) var<storage, read> rsin4: array<vec4<f32>>;     // (max_positions, D/8)
@group(0) @binding(4) var<storage, read_write> ry4: array<vec4<f32>>; // (B, H, T, D / 4)

fn unit(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// Unit u -> (address of its first half in x, address in the tables).
fn rope_addr(u: u32) -> vec2<u32> {
    let i = u % rp.half;
    let row = u / rp.half;              // (b, h, t) flattened
    let pos = rp.offset + row % rp.t;
    return vec2<u32>(row * 2u * rp.half + i, pos * rp.half + i);
}

@compute @workgroup_size(WG)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = unit(wid, nwg, lid);
    if u >= rp.n { return; }
    let a = rope_addr(u);
    let c = rcos[a.y];
    let s = rsin[a.y] * rp.sign;
    let x1 = rx[a.x];
    let x2 = rx[a.x + rp.half];
    ry[a.x] = x1 * c - x2 * s;
    ry[a.x + rp.half] = x2 * c + x1 * s;
}

@compute @workgroup_size(WG)
fn rope4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = unit(wid, nwg, lid);
    if u >= rp.n { return; }
    let a = rope_addr(u);
    let c = rcos4[a.y];
    let s = rsin4[a.y] * rp.sign;
    let x1 = rx4[a.x];
    let x2 = rx4[a.x + rp.half];
    ry4[a.x] = x1 * c - x2 * s;
    ry4[a.x + rp.half] = x2 * c + x1 * s;
}
