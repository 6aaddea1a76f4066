// SwiGLU, the gated MLP activation of Llama-family models: y = silu(gate) * up with
// silu(a) = a * sigmoid(a). Two layouts:
// - fused: one (rows, 2F) input, the output of a single matmul with [gate; up] weights, gate in
//   columns 0..F and up in F..2F of each row -> (rows, F);
// - two inputs: gate and up of one shape (weights kept as Hugging Face stores them).
// Backward: d gate = g * up * s * (1 + a * (1 - s)), d up = g * silu(a), with s = sigmoid(a).
// Entries ending in 4 take vec4 units (F % 4 == 0, or n % 4 == 0 for the two-input form).

const WG: u32 = 256u;

struct Swiglu {
    n: u32,   // output units (f32 or vec4)
    f: u32,   // units per half row (fused form)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> sp: Swiglu;

fn unit(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// sigmoid without overflow: exp of a non-positive value only.
fn sigm4(a: vec4<f32>) -> vec4<f32> {
    let e = exp(-abs(a));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), a >= vec4<f32>(0.0));
}

fn fwd4(a: vec4<f32>, u: vec4<f32>) -> vec4<f32> {
    return a * sigm4(a) * u;
}

// (d gate, d up) packed as the columns of a 2x4 matrix.
fn bwd4(a: vec4<f32>, u: vec4<f32>, g: vec4<f32>) -> mat2x4<f32> {
    let s = sigm4(a);
    return mat2x4<f32>(g * u * s * (1.0 + a * (1.0 - s)), g * a * s);
}

// Unit i of the (rows, F) side -> unit of the gate in the (rows, 2F) side (up is f units on).
fn gate_at(i: u32) -> u32 {
    return (i / sp.f) * 2u * sp.f + i % sp.f;
}

// ---- fused (rows, 2F) -> (rows, F) ----
@group(0) @binding(1) var<storage, read> fx: array<f32>;             // (rows, 2F)
@group(0) @binding(2) var<storage, read_write> fy: array<f32>;       // (rows, F)
@group(0) @binding(1) var<storage, read> fx4: array<vec4<f32>>;      // (rows, 2F / 4)
@group(0) @binding(2) var<storage, read_write> fy4: array<vec4<f32>>;// (rows, F / 4)

@compute @workgroup_size(WG)
fn swiglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = unit(wid, nwg, lid);
    if i >= sp.n { return; }
    let at = gate_at(i);
    fy[i] = fwd4(vec4<f32>(fx[at]), vec4<f32>(fx[at + sp.f])).x;
}

@compute @workgroup_size(WG)
fn swiglu4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = unit(wid, nwg, lid);
    if i >= sp.n { return; }
    let at = gate_at(i);
    fy4[i] = fwd4(fx4[at], fx4[at + sp.f]);
}

// backward: x (rows, 2F), g (rows, F) -> dx (rows, 2F); one invocation per (gate, up) pair.
@group(0) @binding(2) var<storage, read> fg: array<f32>;               // (rows, F)
@group(0) @binding(3) var<storage, read_write> fdx: array<f32>;        // (rows, 2F)
@group(0) @binding(2) var<storage, read> fg4: array<vec4<f32>>;        // (rows, F / 4)
@group(0) @binding(3) var<storage, read_write> fdx4: array<vec4<f32>>; // (rows, 2F / 4)

@compute @workgroup_size(WG)
fn swiglu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = unit(wid, nwg, lid);
    if i >= sp.n { return; }
    let at = gate_at(i);
    let d = bwd4(vec4<f32>(fx[at]), vec4<f32>(fx[at + sp.f]), vec4<f32>(fg[i]));
    fdx[at] = d[0].x;
    fdx[at + sp.f] = d[1].x;
}

@compute @workgroup_size(WG)
fn swiglu_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = unit(wid, nwg, lid);
    if i >= sp.n { return; }
    let at = gate_at(i);
    let d = bwd4(fx4[at], fx4[at + sp.f], fg4[i]);
    fdx4[at] = d[0];
    fdx4[at + sp.f] = d[1];
}

// ---- two inputs: gate (n), up (n) -> (n) ----
@group(0) @binding(1) var<storage, read> tgate: array<f32>;              // (n)
@group(0) @binding(2) var<storage, read> tup: array<f32>;                // (n)
@group(0) @binding(3) var<storage, read_write> ty: array<f32>;           // (n)
@group(0) @binding(1) var<storage, read> tgate4: array<vec4<f32>>;       // (n / 4)
@group(0) @binding(2) var<storage, read> tup4: array<vec4<f32>>;         // (n / 4)
@group(0) @binding(3) var<storage, read_write> ty4: array<vec4<f32>>;    // (n / 4)

@compute @workgroup_size(WG)
fn swiglu2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = unit(wid, nwg, lid);
    if i >= sp.n { return; }
    ty[i] = fwd4(vec4<f32>(tgate[i]), vec4<f32>(tup[i])).x;
}

@compute @workgroup_size(WG)
fn swiglu2_4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = unit(wid, nwg, lid);
    if i >= sp.n { return; }
    ty4[i] = fwd4(tgate4[i], tup4[i]);
}

// backward: gate, up, g (n) -> d gate, d up (n)
@group(0) @binding(3) var<storage, read> tg: array<f32>;                  // (n)
@group(0) @binding(4) var<storage, read_write> tdgate: array<f32>;        // (n)
@group(0) @binding(5) var<storage, read_write> tdup: array<f32>;          // (n)
@group(0) @binding(3) var<storage, read> tg4: array<vec4<f32>>;           // (n / 4)
@group(0) @binding(4) var<storage, read_write> tdgate4: array<vec4<f32>>; // (n / 4)
@group(0) @binding(5) var<storage, read_write> tdup4: array<vec4<f32>>;   // (n / 4)

@compute @workgroup_size(WG)
fn swiglu2_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = unit(wid, nwg, lid);
    if i >= sp.n { return; }
    let d = bwd4(vec4<f32>(tgate[i]), vec4<f32>(tup[i]), vec4<f32>(tg[i]));
    tdgate[i] = d[0].x;
    tdup[i] = d[1].x;
}

@compute @workgroup_size(WG)
fn swiglu2_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = unit(wid, nwg, lid);
    if i >= sp.n { return; }
    let d = bwd4(tgate4[i], tup4[i], tg4[i]);
    tdgate4[i] = d[0];
    tdup4[i] = d[1];
}
