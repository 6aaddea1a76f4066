// RMSNorm over the last axis of (rows, C), as Hugging Face's LlamaRMSNorm:
//   rstd = 1 / sqrt(mean(x^2) + eps), y = (x * rstd) * w
// (normalised first, weight multiplied after). The forward saves rstd per row; the backward
// computes dx per row and dw as column sums in a fixed order (partials over chunks of rows,
// then a column sum), so the same input gives the same bits. Row kernels in the forms of
// src/ops/rows.rs: one workgroup per row (GPUs, long rows) and `*_inv` / `*_inv4`, one
// invocation per row (CPU adapters); the one-subgroup-per-row form is norm_rms_subgroup.wgsl.

const WG: u32 = 256u;
const WG_ROWS: u32 = 64u;

struct RmsNorm {
    rows: u32,
    cols: u32,   // C
    eps: f32,
    chunk: u32,  // rows summed by one invocation of rmsnorm_backward_weight
    n: u32,      // invocations of rmsnorm_backward_weight: chunks * C (or chunks * C / 4)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> rp: RmsNorm;

// forward
@group(0) @binding(1) var<storage, read> rx: array<f32>;            // (rows, C)
@group(0) @binding(2) var<storage, read> rw: array<f32>;            // (C)
@group(0) @binding(3) var<storage, read_write> ry: array<f32>;      // (rows, C)
@group(0) @binding(4) var<storage, read_write> rrstd: array<f32>;   // (rows)

var<workgroup> sh: array<f32, WG>;

// Sum of `v` over the workgroup (a fixed tree: deterministic).
fn reduce1(v: f32, lid: u32) -> f32 {
    sh[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s { sh[lid] += sh[lid + s]; }
        workgroupBarrier();
    }
    let r = sh[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn rmsnorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if r >= rp.rows { return; }
    let base = r * rp.cols;
    var q = 0.0;
    for (var c = lid; c < rp.cols; c += WG) {
        let v = rx[base + c];
        q += v * v;
    }
    let rstd = 1.0 / sqrt(reduce1(q, lid) / f32(rp.cols) + rp.eps);
    for (var c = lid; c < rp.cols; c += WG) {
        ry[base + c] = (rx[base + c] * rstd) * rw[c];
    }
    if lid == 0u { rrstd[r] = rstd; }
}

// backward: dx
@group(0) @binding(3) var<storage, read> drstd: array<f32>;       // (rows) saved by the forward
@group(0) @binding(4) var<storage, read> dg: array<f32>;          // (rows, C) gradient of y
@group(0) @binding(5) var<storage, read_write> ddx: array<f32>;   // (rows, C) gradient of x

// With xhat = x * rstd and h = g * w: dx = rstd * (h - xhat * mean(h * xhat)).
@compute @workgroup_size(WG)
fn rmsnorm_backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if r >= rp.rows { return; }
    let base = r * rp.cols;
    let rstd = drstd[r];
    var acc = 0.0;
    for (var c = lid; c < rp.cols; c += WG) {
        acc += dg[base + c] * rw[c] * rx[base + c];
    }
    // mean(h * xhat) = rstd * mean(h * x)
    let m = reduce1(acc, lid) * rstd / f32(rp.cols);
    for (var c = lid; c < rp.cols; c += WG) {
        let xhat = rx[base + c] * rstd;
        ddx[base + c] = rstd * (dg[base + c] * rw[c] - xhat * m);
    }
}

// ---- one invocation per row ----
// Loop bounds derive from the row's first index, not from uniforms alone (lavapipe specialises
// shaders on uniforms that decide loop conditions).

fn row_inv(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG_ROWS + lid;
}

@compute @workgroup_size(WG_ROWS)
fn rmsnorm_forward_inv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= rp.rows { return; }
    let base = r * rp.cols;
    let end = base + rp.cols;
    var q = 0.0;
    for (var i = base; i < end; i++) {
        let v = rx[i];
        q += v * v;
    }
    let rstd = 1.0 / sqrt(q / f32(rp.cols) + rp.eps);
    for (var i = base; i < end; i++) {
        ry[i] = (rx[i] * rstd) * rw[i - base];
    }
    rrstd[r] = rstd;
}

@compute @workgroup_size(WG_ROWS)
fn rmsnorm_backward_dx_inv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= rp.rows { return; }
    let base = r * rp.cols;
    let end = base + rp.cols;
    let rstd = drstd[r];
    var acc = 0.0;
    for (var i = base; i < end; i++) { acc += dg[i] * rw[i - base] * rx[i]; }
    let m = acc * rstd / f32(rp.cols);
    for (var i = base; i < end; i++) {
        ddx[i] = rstd * (dg[i] * rw[i - base] - rx[i] * rstd * m);
    }
}

// vec4 loads (C % 4 == 0): a quarter of the storage accesses (each one a per-lane loop on
// lavapipe) and four partial sums.
@group(0) @binding(1) var<storage, read> rx4: array<vec4<f32>>;          // (rows, C / 4)
@group(0) @binding(2) var<storage, read> rw4: array<vec4<f32>>;          // (C / 4)
@group(0) @binding(3) var<storage, read_write> ry4: array<vec4<f32>>;    // (rows, C / 4)
@group(0) @binding(4) var<storage, read> dg4: array<vec4<f32>>;          // (rows, C / 4) gradient of y
@group(0) @binding(5) var<storage, read_write> ddx4: array<vec4<f32>>;   // (rows, C / 4) gradient of x

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

@compute @workgroup_size(WG_ROWS)
fn rmsnorm_forward_inv4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= rp.rows { return; }
    let base = r * (rp.cols / 4u);
    let end = base + rp.cols / 4u;
    var q = vec4<f32>(0.0);
    for (var i = base; i < end; i++) {
        let v = rx4[i];
        q += v * v;
    }
    let rstd = 1.0 / sqrt(hsum(q) / f32(rp.cols) + rp.eps);
    for (var i = base; i < end; i++) {
        ry4[i] = (rx4[i] * rstd) * rw4[i - base];
    }
    rrstd[r] = rstd;
}

@compute @workgroup_size(WG_ROWS)
fn rmsnorm_backward_dx_inv4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= rp.rows { return; }
    let base = r * (rp.cols / 4u);
    let end = base + rp.cols / 4u;
    let rstd = drstd[r];
    var acc = vec4<f32>(0.0);
    for (var i = base; i < end; i++) { acc += dg4[i] * rw4[i - base] * rx4[i]; }
    let m = hsum(acc) * rstd / f32(rp.cols);
    for (var i = base; i < end; i++) {
        ddx4[i] = rstd * (dg4[i] * rw4[i - base] - rx4[i] * (rstd * m));
    }
}

// backward: dw partials. Invocation (k, c) sums rows [k * chunk, (k + 1) * chunk) of column
// c in order; neighbouring invocations read neighbouring columns. No atomics.
@group(0) @binding(2) var<storage, read> prstd: array<f32>;           // (rows)
@group(0) @binding(3) var<storage, read> pg: array<f32>;              // (rows, C) gradient of y
@group(0) @binding(4) var<storage, read_write> pdw: array<f32>;       // (chunks, C)

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn rmsnorm_backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let o = flat(wid, nwg, lid);
    if o >= rp.n { return; }
    let k = o / rp.cols;
    let c = o % rp.cols;
    let r0 = k * rp.chunk;
    let r1 = min(r0 + rp.chunk, rp.rows);
    var s = 0.0;
    for (var r = r0; r < r1; r++) {
        let i = r * rp.cols + c;
        s += pg[i] * (rx[i] * prstd[r]);
    }
    pdw[o] = s;
}

// Same with vec4 loads when C % 4 == 0 (n = chunks * C / 4).
@group(0) @binding(3) var<storage, read> pg4: array<vec4<f32>>;        // (rows, C / 4)
@group(0) @binding(4) var<storage, read_write> pdw4: array<vec4<f32>>; // (chunks, C / 4)

@compute @workgroup_size(WG)
fn rmsnorm_backward_weight4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let o = flat(wid, nwg, lid);
    if o >= rp.n { return; }
    let c4 = rp.cols / 4u;
    let k = o / c4;
    let c = o % c4;
    let r0 = k * rp.chunk;
    let r1 = min(r0 + rp.chunk, rp.rows);
    var s = vec4<f32>(0.0);
    for (var r = r0; r < r1; r++) {
        let i = r * c4 + c;
        s += pg4[i] * (rx4[i] * prstd[r]);
    }
    pdw4[o] = s;
}
