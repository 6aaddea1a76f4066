// enable subgroups;
// (The directive is WGSL's, but naga 30 rejects it as unimplemented; subgroup builtins are
// gated by the device's SUBGROUP feature instead. The launcher compiles this file only when
// `Device::has_subgroups()` is true.)
//
// The row kernels of cross-entropy and accuracy over (rows, C) logits: one subgroup per row. A
// workgroup of WG_ROWS invocations owns SG_ROWS consecutive rows; its subgroups take them in
// turn, so any subgroup size works. Lanes stride the row; subgroupMax / subgroupAdd /
// subgroupMin reduce it: no workgroup memory, no barriers. Same parameters, bindings and
// results as ce_rows / accuracy_rows in loss.wgsl.

const WG_ROWS: u32 = 64u;
const SG_ROWS: u32 = 8u;

struct Rows {
    rows: u32,
    cols: u32,        // C classes
    ignore: u32,      // ignored target id, when has_ignore == 1
    has_ignore: u32,
    n: u32,           // rows * C (backward)
    nan_bits: u32,    // 0x7fc00000: the loss of a row whose target is out of range
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> rp: Rows;
@group(0) @binding(1) var<storage, read> cz: array<f32>;                // (rows, C) logits
@group(0) @binding(2) var<storage, read> ct: array<u32>;                // (rows) target ids
@group(0) @binding(3) var<storage, read_write> cstat: array<vec2<f32>>; // (rows) (loss, counted)
@group(0) @binding(4) var<storage, read_write> clse: array<f32>;        // (rows) log-sum-exp of the logits

// lse = m + log(sum exp(z - m)); loss = (m - z_t) + log(sum). Ignored rows give (0, 0); an
// out-of-range target NaN.
@compute @workgroup_size(WG_ROWS)
fn ce_rows_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
    let r0 = (wid.y * nwg.x + wid.x) * SG_ROWS;
    for (var k = sg; k < SG_ROWS; k += nsg) {
        let r = r0 + k;
        if r >= rp.rows { break; }
        let base = r * rp.cols;
        let end = base + rp.cols;
        var m = cz[min(base + lane, end - 1u)];
        for (var i = base + lane; i < end; i += sgs) { m = max(m, cz[i]); }
        m = subgroupMax(m);
        var s = 0.0;
        for (var i = base + lane; i < end; i += sgs) { s += exp(cz[i] - m); }
        s = subgroupAdd(s);
        if lane == 0u {
            let ls = log(s);
            clse[r] = m + ls;
            let t = ct[r];
            if rp.has_ignore == 1u && t == rp.ignore {
                cstat[r] = vec2<f32>(0.0, 0.0);
            } else if t >= rp.cols {
                cstat[r] = vec2<f32>(bitcast<f32>(rp.nan_bits), 1.0);
            } else {
                cstat[r] = vec2<f32>((m - cz[base + t]) + ls, 1.0);
            }
        }
    }
}

@group(0) @binding(3) var<storage, read_write> acorrect: array<f32>; // (rows) 1 where argmax == target

// The first index of the row maximum, compared with the target.
@compute @workgroup_size(WG_ROWS)
fn accuracy_rows_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
    let r0 = (wid.y * nwg.x + wid.x) * SG_ROWS;
    for (var k = sg; k < SG_ROWS; k += nsg) {
        let r = r0 + k;
        if r >= rp.rows { break; }
        let base = r * rp.cols;
        let end = base + rp.cols;
        // Each lane: the first maximum of its strided share (indices ascend within a lane).
        var best = cz[min(base + lane, end - 1u)];
        var arg = min(lane, rp.cols - 1u);
        for (var i = base + lane; i < end; i += sgs) {
            let v = cz[i];
            if v > best { best = v; arg = i - base; }
        }
        let m = subgroupMax(best);
        let first = subgroupMin(select(0xffffffffu, arg, best == m));
        if lane == 0u { acorrect[r] = select(0.0, 1.0, first == ct[r]); }
    }
}
