// enable subgroups;
// (The directive is WGSL's, but naga 30 rejects it as unimplemented; subgroup builtins are
// gated by the device's SUBGROUP feature instead. The launcher compiles this file only when
// `Device::has_subgroups()` is true.)
//
// RMSNorm forward and backward for x over the last axis of (rows, C): one subgroup per row,
// as the LayerNorm kernels of norm_subgroup.wgsl. A workgroup of WG_ROWS invocations owns
// SG_ROWS consecutive rows; its subgroups take them in turn, so any subgroup size works.
// Same parameters, bindings and arithmetic as the row kernels of norm_rms.wgsl.

const WG_ROWS: u32 = 64u;
const SG_ROWS: u32 = 8u;

struct RmsNorm {
    rows: u32,
    cols: u32,   // C
    eps: f32,
    chunk: u32,
    n: u32,
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

@compute @workgroup_size(WG_ROWS)
fn rmsnorm_forward_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
    let r0 = (wid.y * nwg.x + wid.x) * SG_ROWS;
    for (var k = sg; k < SG_ROWS; k += nsg) {
        let r = r0 + k;
        if r >= rp.rows { break; }
        let base = r * rp.cols;
        let end = base + rp.cols;
        var q = 0.0;
        for (var i = base + lane; i < end; i += sgs) {
            let v = rx[i];
            q += v * v;
        }
        let rstd = 1.0 / sqrt(subgroupAdd(q) / f32(rp.cols) + rp.eps);
        for (var i = base + lane; i < end; i += sgs) {
            ry[i] = (rx[i] * rstd) * rw[i - base];
        }
        if lane == 0u { rrstd[r] = rstd; }
    }
}

// backward: dx
@group(0) @binding(3) var<storage, read> drstd: array<f32>;       // (rows) saved by the forward
@group(0) @binding(4) var<storage, read> dg: array<f32>;          // (rows, C) gradient of y
@group(0) @binding(5) var<storage, read_write> ddx: array<f32>;   // (rows, C) gradient of x

// With xhat = x * rstd and h = g * w: dx = rstd * (h - xhat * mean(h * xhat)).
@compute @workgroup_size(WG_ROWS)
fn rmsnorm_backward_dx_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
    let r0 = (wid.y * nwg.x + wid.x) * SG_ROWS;
    for (var k = sg; k < SG_ROWS; k += nsg) {
        let r = r0 + k;
        if r >= rp.rows { break; }
        let base = r * rp.cols;
        let end = base + rp.cols;
        let rstd = drstd[r];
        var acc = 0.0;
        for (var i = base + lane; i < end; i += sgs) { acc += dg[i] * rw[i - base] * rx[i]; }
        let m = subgroupAdd(acc) * rstd / f32(rp.cols);
        for (var i = base + lane; i < end; i += sgs) {
            ddx[i] = rstd * (dg[i] * rw[i - base] - rx[i] * rstd * m);
        }
    }
}
