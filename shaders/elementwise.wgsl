// Elementwise ops: broadcasting binary (add, sub, mul, div), unary maps, scalar ops, fill.
// One invocation per output element; grids wider than 65,535 workgroups fold into 2-D.

const WG: u32 = 256u;

// The indexing mode (the params' `mode`), fixed per pipeline: a CPU adapter (lavapipe) runs
// every branch of a switch on a uniform value masked, so the general path's per-dim integer
// divisions would cost every element whatever the mode.
override MODE: u32 = 0u;

struct Binary {
    n: u32,      // output elements
    rank: u32,   // dims used in shape/sa/sb (general mode)
    mode: u32,   // 0 general strided, 1 same shape, 2 b repeats (ib = i % nb), 3 a repeats (= MODE)
    nb: u32,     // elements of the repeating operand in modes 2/3
    shape: array<vec4<u32>, 2>, // output shape, up to rank 8
    sa: array<vec4<u32>, 2>,    // strides of a per output dim (0 where broadcast)
    sb: array<vec4<u32>, 2>,    // strides of b per output dim (0 where broadcast)
}

@group(0) @binding(0) var<uniform> bp: Binary;
@group(0) @binding(1) var<storage, read> ba: array<f32>;       // a, broadcastable to out
@group(0) @binding(2) var<storage, read> bb: array<f32>;       // b, broadcastable to out
@group(0) @binding(3) var<storage, read_write> bo: array<f32>; // out (broadcast shape)

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

fn dim(v: array<vec4<u32>, 2>, d: u32) -> u32 {
    return v[d / 4u][d % 4u];
}

// Indices of a and b that feed output element i.
fn operands(i: u32) -> vec2<u32> {
    switch MODE {
        case 1u: { return vec2<u32>(i, i); }
        case 2u: { return vec2<u32>(i, i % bp.nb); }
        case 3u: { return vec2<u32>(i % bp.nb, i); }
        default: {
            var rem = i;
            var ia = 0u;
            var ib = 0u;
            for (var k = 0u; k < bp.rank; k++) {
                let d = bp.rank - 1u - k;
                let s = dim(bp.shape, d);
                let c = rem % s;
                rem = rem / s;
                ia += c * dim(bp.sa, d);
                ib += c * dim(bp.sb, d);
            }
            return vec2<u32>(ia, ib);
        }
    }
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i >= bp.n { return; }
    let j = operands(i);
    bo[i] = ba[j.x] + bb[j.y];
}

@compute @workgroup_size(WG)
fn sub(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i >= bp.n { return; }
    let j = operands(i);
    bo[i] = ba[j.x] - bb[j.y];
}

@compute @workgroup_size(WG)
fn mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i >= bp.n { return; }
    let j = operands(i);
    bo[i] = ba[j.x] * bb[j.y];
}

@compute @workgroup_size(WG)
fn div(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i >= bp.n { return; }
    let j = operands(i);
    bo[i] = ba[j.x] / bb[j.y];
}

// Same-shape fast path, four elements per invocation (n % 4 == 0): a quarter of the
// invocations and 16-byte loads, which is what software adapters are limited by.
struct Same4 {
    n4: u32, // output elements / 4
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> sp: Same4;
@group(0) @binding(1) var<storage, read> sa4: array<vec4<f32>>;       // (n / 4)
@group(0) @binding(2) var<storage, read> sb4: array<vec4<f32>>;       // (n / 4)
@group(0) @binding(3) var<storage, read_write> so4: array<vec4<f32>>; // (n / 4)

@compute @workgroup_size(WG)
fn add4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i < sp.n4 { so4[i] = sa4[i] + sb4[i]; }
}

@compute @workgroup_size(WG)
fn sub4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i < sp.n4 { so4[i] = sa4[i] - sb4[i]; }
}

@compute @workgroup_size(WG)
fn mul4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i < sp.n4 { so4[i] = sa4[i] * sb4[i]; }
}

@compute @workgroup_size(WG)
fn div4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i < sp.n4 { so4[i] = sa4[i] / sb4[i]; }
}

// ---- expand: out[i] = a[broadcast index] * scale (the backward of sum/mean, broadcast_to) ----
// Uses the Binary params; `nb` carries the f32 scale's bits. Modes (set by the launcher) avoid
// the per-dim index decomposition, an integer division per dim and element, for the common
// layouts: 4 one source element; 5 each source element repeated sb[0] times (a reduced
// trailing axis: (rows, 1) -> (rows, cols)); 2 the source repeated whole (ia = i % sb[0]);
// 0 general strided.
@compute @workgroup_size(WG)
fn expand(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i >= bp.n { return; }
    var ia = 0u;
    switch MODE {
        case 4u: { ia = 0u; }
        case 5u: { ia = i / bp.sb[0].x; }
        case 2u: { ia = i % bp.sb[0].x; }
        default: {
            var rem = i;
            for (var k = 0u; k < bp.rank; k++) {
                let d = bp.rank - 1u - k;
                let s = dim(bp.shape, d);
                ia += (rem % s) * dim(bp.sa, d);
                rem = rem / s;
            }
        }
    }
    bo[i] = ba[ia] * bitcast<f32>(bp.nb);
}
