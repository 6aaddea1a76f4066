// enable subgroups;
// (The directive is WGSL's, but naga 30 rejects it as unimplemented; subgroup builtins are
// gated by the device's SUBGROUP feature instead. The launcher compiles this file only when
// `Device::has_subgroups()` is true.)
//
// Softmax and log-softmax over the last axis of (rows, cols), and their backward: one subgroup
// per row. A workgroup of WG_ROWS invocations owns SG_ROWS consecutive rows; its subgroups take
// them in turn, so any subgroup size works (read from the builtins, never assumed). Lanes stride
// the row; reductions are subgroupMax / subgroupAdd: no workgroup memory, no barriers.
// Same parameters and bindings as softmax.wgsl.

const WG_ROWS: u32 = 64u;
const SG_ROWS: u32 = 8u;

struct Softmax {
    rows: u32,
    cols: u32,
    _pad: vec2<u32>,
}

@group(0) @binding(0) var<uniform> p: Softmax;
@group(0) @binding(1) var<storage, read> x: array<f32>;       // (rows, cols)
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // (rows, cols)

// Row max and sum of exp(x - max) over x[base .. end), lanes striding by sgs.
fn stats(base: u32, end: u32, lane: u32, sgs: u32) -> vec2<f32> {
    var m = x[min(base + lane, end - 1u)];
    for (var i = base + lane; i < end; i += sgs) { m = max(m, x[i]); }
    m = subgroupMax(m);
    var s = 0.0;
    for (var i = base + lane; i < end; i += sgs) { s += exp(x[i] - m); }
    return vec2<f32>(m, subgroupAdd(s));
}

@compute @workgroup_size(WG_ROWS)
fn softmax_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
    let r0 = (wid.y * nwg.x + wid.x) * SG_ROWS;
    for (var k = sg; k < SG_ROWS; k += nsg) {
        let r = r0 + k;
        if r >= p.rows { break; }
        let base = r * p.cols;
        let end = base + p.cols;
        let st = stats(base, end, lane, sgs);
        let inv = 1.0 / st.y;
        for (var i = base + lane; i < end; i += sgs) { y[i] = exp(x[i] - st.x) * inv; }
    }
}

@compute @workgroup_size(WG_ROWS)
fn log_softmax_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
    let r0 = (wid.y * nwg.x + wid.x) * SG_ROWS;
    for (var k = sg; k < SG_ROWS; k += nsg) {
        let r = r0 + k;
        if r >= p.rows { break; }
        let base = r * p.cols;
        let end = base + p.cols;
        let st = stats(base, end, lane, sgs);
        let lse = st.x + log(st.y);
        for (var i = base + lane; i < end; i += sgs) { y[i] = x[i] - lse; }
    }
}

// ---- backward ----
@group(0) @binding(1) var<storage, read> by: array<f32>;        // (rows, cols) forward output
@group(0) @binding(2) var<storage, read> bg: array<f32>;        // (rows, cols) gradient of output
@group(0) @binding(3) var<storage, read_write> bx: array<f32>;  // (rows, cols) gradient of input

// dx = y * (g - sum(g * y))
@compute @workgroup_size(WG_ROWS)
fn softmax_backward_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
    let r0 = (wid.y * nwg.x + wid.x) * SG_ROWS;
    for (var k = sg; k < SG_ROWS; k += nsg) {
        let r = r0 + k;
        if r >= p.rows { break; }
        let base = r * p.cols;
        let end = base + p.cols;
        var s = 0.0;
        for (var i = base + lane; i < end; i += sgs) { s += bg[i] * by[i]; }
        s = subgroupAdd(s);
        for (var i = base + lane; i < end; i += sgs) { bx[i] = by[i] * (bg[i] - s); }
    }
}

// y = log_softmax(x): dx = g - exp(y) * sum(g)
@compute @workgroup_size(WG_ROWS)
fn log_softmax_backward_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
    let r0 = (wid.y * nwg.x + wid.x) * SG_ROWS;
    for (var k = sg; k < SG_ROWS; k += nsg) {
        let r = r0 + k;
        if r >= p.rows { break; }
        let base = r * p.cols;
        let end = base + p.cols;
        var s = 0.0;
        for (var i = base + lane; i < end; i += sgs) { s += bg[i]; }
        s = subgroupAdd(s);
        for (var i = base + lane; i < end; i += sgs) { bx[i] = bg[i] - exp(by[i]) * s; }
    }
}
