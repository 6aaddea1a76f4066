// enable subgroups;
// (The directive is WGSL's, but naga 30 rejects it as unimplemented; subgroup builtins are
// gated by the device's SUBGROUP feature instead. The launcher compiles this file only when
// `Device::has_subgroups()` is true.)
//
// LayerNorm forward and backward for x over the last axis of (rows, C): one subgroup per row.
// A workgroup of WG_ROWS invocations owns SG_ROWS consecutive rows; its subgroups take them in
// turn, so any subgroup size works. Lanes stride the row; subgroupAdd reduces it: no workgroup
// memory, no barriers. Same parameters, bindings and arithmetic as the LayerNorm row kernels of
// norm.wgsl (two-pass variance, biased as PyTorch).

const WG_ROWS: u32 = 64u;
const SG_ROWS: u32 = 8u;

struct LayerNorm {
    rows: u32,
    cols: u32,   // C
    eps: f32,
    chunk: u32,
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> lp: LayerNorm;

// forward
@group(0) @binding(1) var<storage, read> lx: array<f32>;           // (rows, C)
@group(0) @binding(2) var<storage, read> lgamma: array<f32>;       // (C)
@group(0) @binding(3) var<storage, read> lbeta: array<f32>;        // (C)
@group(0) @binding(4) var<storage, read_write> ly: array<f32>;     // (rows, C)
@group(0) @binding(5) var<storage, read_write> lmean: array<f32>;  // (rows)
@group(0) @binding(6) var<storage, read_write> lrstd: array<f32>;  // (rows)

@compute @workgroup_size(WG_ROWS)
fn layernorm_forward_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
    let r0 = (wid.y * nwg.x + wid.x) * SG_ROWS;
    let inv_c = 1.0 / f32(lp.cols);
    for (var k = sg; k < SG_ROWS; k += nsg) {
        let r = r0 + k;
        if r >= lp.rows { break; }
        let base = r * lp.cols;
        let end = base + lp.cols;
        var s = 0.0;
        for (var i = base + lane; i < end; i += sgs) { s += lx[i]; }
        let mean = subgroupAdd(s) * inv_c;
        var q = 0.0;
        for (var i = base + lane; i < end; i += sgs) {
            let d = lx[i] - mean;
            q += d * d;
        }
        let rstd = 1.0 / sqrt(subgroupAdd(q) * inv_c + lp.eps);
        for (var i = base + lane; i < end; i += sgs) {
            let c = i - base;
            ly[i] = (lx[i] - mean) * rstd * lgamma[c] + lbeta[c];
        }
        if lane == 0u {
            lmean[r] = mean;
            lrstd[r] = rstd;
        }
    }
}

// backward: dx
@group(0) @binding(3) var<storage, read> dmean: array<f32>;       // (rows) saved by the forward
@group(0) @binding(4) var<storage, read> drstd: array<f32>;       // (rows) saved by the forward
@group(0) @binding(5) var<storage, read> dg: array<f32>;          // (rows, C) gradient of y
@group(0) @binding(6) var<storage, read_write> ddx: array<f32>;   // (rows, C) gradient of x

// With xhat = (x - mean) * rstd and h = g * gamma:
// dx = rstd * (h - mean(h) - xhat * mean(h * xhat)).
@compute @workgroup_size(WG_ROWS)
fn layernorm_backward_dx_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
    let r0 = (wid.y * nwg.x + wid.x) * SG_ROWS;
    let inv_c = 1.0 / f32(lp.cols);
    for (var k = sg; k < SG_ROWS; k += nsg) {
        let r = r0 + k;
        if r >= lp.rows { break; }
        let base = r * lp.cols;
        let end = base + lp.cols;
        let mean = dmean[r];
        let rstd = drstd[r];
        var acc = vec2<f32>(0.0, 0.0);
        for (var i = base + lane; i < end; i += sgs) {
            let h = dg[i] * lgamma[i - base];
            let xhat = (lx[i] - mean) * rstd;
            acc += vec2<f32>(h, h * xhat);
        }
        let m = subgroupAdd(acc) * inv_c;
        for (var i = base + lane; i < end; i += sgs) {
            let h = dg[i] * lgamma[i - base];
            let xhat = (lx[i] - mean) * rstd;
            ddx[i] = rstd * (h - m.x - xhat * m.y);
        }
    }
}

// ---- Residual add + LayerNorm (see norm.wgsl) ----

@group(0) @binding(7) var<storage, read> lres: array<f32>;          // (rows, C) forward: the residual branch; backward: the gradient of sum from its other use
@group(0) @binding(8) var<storage, read_write> lsum: array<f32>;    // (rows, C) x + res

@compute @workgroup_size(WG_ROWS)
fn add_layernorm_forward_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
    let r0 = (wid.y * nwg.x + wid.x) * SG_ROWS;
    let inv_c = 1.0 / f32(lp.cols);
    for (var k = sg; k < SG_ROWS; k += nsg) {
        let r = r0 + k;
        if r >= lp.rows { break; }
        let base = r * lp.cols;
        let end = base + lp.cols;
        var s = 0.0;
        for (var i = base + lane; i < end; i += sgs) {
            let v = lx[i] + lres[i];
            lsum[i] = v;
            s += v;
        }
        let mean = subgroupAdd(s) * inv_c;
        var q = 0.0;
        for (var i = base + lane; i < end; i += sgs) {
            let d = lsum[i] - mean;
            q += d * d;
        }
        let rstd = 1.0 / sqrt(subgroupAdd(q) * inv_c + lp.eps);
        for (var i = base + lane; i < end; i += sgs) {
            let c = i - base;
            ly[i] = (lsum[i] - mean) * rstd * lgamma[c] + lbeta[c];
        }
        if lane == 0u {
            lmean[r] = mean;
            lrstd[r] = rstd;
        }
    }
}

@compute @workgroup_size(WG_ROWS)
fn layernorm_backward_dx_add_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
    let r0 = (wid.y * nwg.x + wid.x) * SG_ROWS;
    let inv_c = 1.0 / f32(lp.cols);
    for (var k = sg; k < SG_ROWS; k += nsg) {
        let r = r0 + k;
        if r >= lp.rows { break; }
        let base = r * lp.cols;
        let end = base + lp.cols;
        let mean = dmean[r];
        let rstd = drstd[r];
        var acc = vec2<f32>(0.0, 0.0);
        for (var i = base + lane; i < end; i += sgs) {
            let h = dg[i] * lgamma[i - base];
            let xhat = (lx[i] - mean) * rstd;
            acc += vec2<f32>(h, h * xhat);
        }
        let m = subgroupAdd(acc) * inv_c;
        for (var i = base + lane; i < end; i += sgs) {
            let h = dg[i] * lgamma[i - base];
            let xhat = (lx[i] - mean) * rstd;
            ddx[i] = rstd * (h - m.x - xhat * m.y) + lres[i];
        }
    }
}
