// Softmax and log-softmax over the last axis of (rows, cols), max-subtracted so large logits
// never overflow. Two forms (chosen per adapter and row length in src/ops/rows.rs):
// - one workgroup per row, tree reductions in workgroup memory (GPUs, long rows);
// - `*_inv`: one invocation per row looping over its columns, WG_ROWS rows per workgroup; no
//   workgroup memory and no barriers (CPU adapters, where each barrier switches every
//   coroutine of the workgroup). Loop bounds derive from the row's first index, not from
//   uniforms alone (lavapipe specialises shaders on uniforms that decide loop conditions).
// The one-subgroup-per-row form is in softmax_subgroup.wgsl.

const WG: u32 = 256u;
const WG_ROWS: u32 = 64u;

struct Softmax {
    rows: u32,
    cols: u32,
    _pad: vec2<u32>,
}

@group(0) @binding(0) var<uniform> p: Softmax;
@group(0) @binding(1) var<storage, read> x: array<f32>;       // (rows, cols)
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // (rows, cols)

var<workgroup> sh: array<f32, WG>;

fn reduce_max(v: f32, lid: u32) -> f32 {
    sh[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s { sh[lid] = max(sh[lid], sh[lid + s]); }
        workgroupBarrier();
    }
    let r = sh[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(v: f32, lid: u32) -> f32 {
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

// Row max and sum of exp(x - max).
fn stats(base: u32, lid: u32) -> vec2<f32> {
    var m = x[base + min(lid, p.cols - 1u)];
    for (var c = lid; c < p.cols; c += WG) { m = max(m, x[base + c]); }
    m = reduce_max(m, lid);
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) { s += exp(x[base + c] - m); }
    s = reduce_sum(s, lid);
    return vec2<f32>(m, s);
}

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if r >= p.rows { return; }
    let base = r * p.cols;
    let st = stats(base, lid);
    let inv = 1.0 / st.y;
    for (var c = lid; c < p.cols; c += WG) { y[base + c] = exp(x[base + c] - st.x) * inv; }
}

@compute @workgroup_size(WG)
fn log_softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if r >= p.rows { return; }
    let base = r * p.cols;
    let st = stats(base, lid);
    let lse = st.x + log(st.y);
    for (var c = lid; c < p.cols; c += WG) { y[base + c] = x[base + c] - lse; }
}

// ---- backward ----
@group(0) @binding(1) var<storage, read> by: array<f32>;        // (rows, cols) forward output
@group(0) @binding(2) var<storage, read> bg: array<f32>;        // (rows, cols) gradient of output
@group(0) @binding(3) var<storage, read_write> bx: array<f32>;  // (rows, cols) gradient of input

// dx = y * (g - sum(g * y))
@compute @workgroup_size(WG)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if r >= p.rows { return; }
    let base = r * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) { s += bg[base + c] * by[base + c]; }
    s = reduce_sum(s, lid);
    for (var c = lid; c < p.cols; c += WG) { bx[base + c] = by[base + c] * (bg[base + c] - s); }
}

// y = log_softmax(x): dx = g - exp(y) * sum(g)
@compute @workgroup_size(WG)
fn log_softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if r >= p.rows { return; }
    let base = r * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) { s += bg[base + c]; }
    s = reduce_sum(s, lid);
    for (var c = lid; c < p.cols; c += WG) { bx[base + c] = bg[base + c] - exp(by[base + c]) * s; }
}

// ---- one invocation per row ----

fn row_inv(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG_ROWS + lid;
}

// Row max and sum of exp(x - max) over x[base .. end).
fn stats_inv(base: u32, end: u32) -> vec2<f32> {
    var m = x[base];
    for (var i = base + 1u; i < end; i++) { m = max(m, x[i]); }
    var s = 0.0;
    for (var i = base; i < end; i++) { s += exp(x[i] - m); }
    return vec2<f32>(m, s);
}

@compute @workgroup_size(WG_ROWS)
fn softmax_inv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= p.rows { return; }
    let base = r * p.cols;
    let end = base + p.cols;
    let st = stats_inv(base, end);
    let inv = 1.0 / st.y;
    for (var i = base; i < end; i++) { y[i] = exp(x[i] - st.x) * inv; }
}

@compute @workgroup_size(WG_ROWS)
fn log_softmax_inv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= p.rows { return; }
    let base = r * p.cols;
    let end = base + p.cols;
    let st = stats_inv(base, end);
    let lse = st.x + log(st.y);
    for (var i = base; i < end; i++) { y[i] = x[i] - lse; }
}

@compute @workgroup_size(WG_ROWS)
fn softmax_backward_inv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= p.rows { return; }
    let base = r * p.cols;
    let end = base + p.cols;
    var s = 0.0;
    for (var i = base; i < end; i++) { s += bg[i] * by[i]; }
    for (var i = base; i < end; i++) { bx[i] = by[i] * (bg[i] - s); }
}

@compute @workgroup_size(WG_ROWS)
fn log_softmax_backward_inv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= p.rows { return; }
    let base = r * p.cols;
    let end = base + p.cols;
    var s = 0.0;
    for (var i = base; i < end; i++) { s += bg[i]; }
    for (var i = base; i < end; i++) { bx[i] = bg[i] - exp(by[i]) * s; }
}
