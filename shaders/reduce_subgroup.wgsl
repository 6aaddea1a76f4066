// enable subgroups;
// (The directive is WGSL's, but naga 30 rejects it as unimplemented; subgroup builtins are
// gated by the device's SUBGROUP feature instead. The launcher compiles this file only when
// `Device::has_subgroups()` is true.)
//
// Sum (scaled) and max over the last axis of a (rows, cols) view: one subgroup per row. A
// workgroup of WG_ROWS invocations owns SG_ROWS consecutive rows; its subgroups take them in
// turn, so any subgroup size works. Lanes stride the row; subgroupAdd / subgroupMax reduce it:
// no workgroup memory, no barriers. Same parameters and bindings as sum_rows / max_rows in
// reduce.wgsl.

const WG_ROWS: u32 = 64u;
const SG_ROWS: u32 = 8u;

struct Reduce {
    rows: u32,
    cols: u32,
    n: u32,      // valid elements of x (the last chunk of a chunked view may be short)
    scale: f32,  // multiplies the result (1/cols for mean)
}

@group(0) @binding(0) var<uniform> p: Reduce;
@group(0) @binding(1) var<storage, read> x: array<f32>;       // (rows, cols)
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // (rows)

@compute @workgroup_size(WG_ROWS)
fn sum_rows_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
    let r0 = (wid.y * nwg.x + wid.x) * SG_ROWS;
    for (var k = sg; k < SG_ROWS; k += nsg) {
        let r = r0 + k;
        if r >= p.rows { break; }
        let base = r * p.cols;
        let end = min(base + p.cols, p.n);
        var acc = 0.0;
        for (var i = base + lane; i < end; i += sgs) { acc += x[i]; }
        acc = subgroupAdd(acc);
        if lane == 0u { y[r] = acc * p.scale; }
    }
}

@compute @workgroup_size(WG_ROWS)
fn max_rows_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
    let r0 = (wid.y * nwg.x + wid.x) * SG_ROWS;
    for (var k = sg; k < SG_ROWS; k += nsg) {
        let r = r0 + k;
        if r >= p.rows { break; }
        let base = r * p.cols;
        let end = min(base + p.cols, p.n);
        // Start from an element of this row (max is idempotent), so -inf rows stay -inf.
        var acc = x[min(base + lane, end - 1u)];
        for (var i = base + lane; i < end; i += sgs) { acc = max(acc, x[i]); }
        acc = subgroupMax(acc);
        if lane == 0u { y[r] = acc; }
    }
}
