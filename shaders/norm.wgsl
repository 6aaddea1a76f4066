// Neural-net layers.
// - LayerNorm over the last axis of (rows, C): the forward saves per-row mean and rstd; the
//   backward computes dx per row, and dgamma/dbeta as column sums in a fixed order (partials
//   over chunks of rows, then a column sum), so the same input gives the same bits. The row
//   kernels come in two forms here (chosen in src/ops/rows.rs): one workgroup per row with
//   a tree in workgroup memory (GPUs, long rows), and `*_inv`, one invocation per row looping
//   over its columns without barriers (CPU adapters); the one-subgroup-per-row form is in
//   norm_subgroup.wgsl.
// - Dropout with a counter-based mask: keep element i iff hash(keys, i) >= threshold. The
//   backward is the same kernel applied to the gradient (same keys, same mask), so no mask buffer.

const WG: u32 = 256u;
const WG_ROWS: u32 = 64u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// ---- LayerNorm ----

struct LayerNorm {
    rows: u32,
    cols: u32,   // C
    eps: f32,
    chunk: u32,  // rows summed by one invocation of layernorm_backward_params
    n: u32,      // invocations of layernorm_backward_params: chunks * C
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

var<workgroup> sh: array<vec2<f32>, WG>;

// Sum of `v` over the workgroup (a fixed tree: deterministic).
fn reduce2(v: vec2<f32>, lid: u32) -> vec2<f32> {
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

// One workgroup per row. Two passes (mean, then the mean of squared deviations) so rows with
// a large mean keep their precision. Biased variance, as PyTorch.
@compute @workgroup_size(WG)
fn layernorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if r >= lp.rows { return; }
    let base = r * lp.cols;
    let inv_c = 1.0 / f32(lp.cols);
    var s = 0.0;
    for (var c = lid; c < lp.cols; c += WG) { s += lx[base + c]; }
    let mean = reduce2(vec2<f32>(s, 0.0), lid).x * inv_c;
    var q = 0.0;
    for (var c = lid; c < lp.cols; c += WG) {
        let d = lx[base + c] - mean;
        q += d * d;
    }
    let variance = reduce2(vec2<f32>(q, 0.0), lid).x * inv_c;
    let rstd = 1.0 / sqrt(variance + lp.eps);
    for (var c = lid; c < lp.cols; c += WG) {
        ly[base + c] = (lx[base + c] - mean) * rstd * lgamma[c] + lbeta[c];
    }
    if lid == 0u {
        lmean[r] = mean;
        lrstd[r] = rstd;
    }
}

// backward: dx
@group(0) @binding(3) var<storage, read> dmean: array<f32>;       // (rows) saved by the forward
@group(0) @binding(4) var<storage, read> drstd: array<f32>;       // (rows) saved by the forward
@group(0) @binding(5) var<storage, read> dg: array<f32>;          // (rows, C) gradient of y
@group(0) @binding(6) var<storage, read_write> ddx: array<f32>;   // (rows, C) gradient of x

// With xhat = (x - mean) * rstd and h = g * gamma:
// dx = rstd * (h - mean(h) - xhat * mean(h * xhat)).
@compute @workgroup_size(WG)
fn layernorm_backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if r >= lp.rows { return; }
    let base = r * lp.cols;
    let mean = dmean[r];
    let rstd = drstd[r];
    var acc = vec2<f32>(0.0, 0.0);
    for (var c = lid; c < lp.cols; c += WG) {
        let h = dg[base + c] * lgamma[c];
        let xhat = (lx[base + c] - mean) * rstd;
        acc += vec2<f32>(h, h * xhat);
    }
    let m = reduce2(acc, lid) * (1.0 / f32(lp.cols));
    for (var c = lid; c < lp.cols; c += WG) {
        let h = dg[base + c] * lgamma[c];
        let xhat = (lx[base + c] - mean) * rstd;
        ddx[base + c] = rstd * (h - m.x - xhat * m.y);
    }
}

// ---- LayerNorm, one invocation per row ----
// Loop bounds derive from the row's first index, not from uniforms alone (lavapipe specialises
// shaders on uniforms that decide loop conditions).

fn row_inv(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG_ROWS + lid;
}

// The mean is summed relative to the row's first element, so a large common offset costs
// no precision in the one long sequential sum.
@compute @workgroup_size(WG_ROWS)
fn layernorm_forward_inv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= lp.rows { return; }
    let base = r * lp.cols;
    let end = base + lp.cols;
    let inv_c = 1.0 / f32(lp.cols);
    let x0 = lx[base];
    var s = 0.0;
    for (var i = base; i < end; i++) { s += lx[i] - x0; }
    let mean = x0 + s * inv_c;
    var q = 0.0;
    for (var i = base; i < end; i++) {
        let d = lx[i] - mean;
        q += d * d;
    }
    let rstd = 1.0 / sqrt(q * inv_c + lp.eps);
    for (var i = base; i < end; i++) {
        let c = i - base;
        ly[i] = (lx[i] - mean) * rstd * lgamma[c] + lbeta[c];
    }
    lmean[r] = mean;
    lrstd[r] = rstd;
}

@compute @workgroup_size(WG_ROWS)
fn layernorm_backward_dx_inv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= lp.rows { return; }
    let base = r * lp.cols;
    let end = base + lp.cols;
    let mean = dmean[r];
    let rstd = drstd[r];
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = base; i < end; i++) {
        let h = dg[i] * lgamma[i - base];
        let xhat = (lx[i] - mean) * rstd;
        acc += vec2<f32>(h, h * xhat);
    }
    let m = acc * (1.0 / f32(lp.cols));
    for (var i = base; i < end; i++) {
        let h = dg[i] * lgamma[i - base];
        let xhat = (lx[i] - mean) * rstd;
        ddx[i] = rstd * (h - m.x - xhat * m.y);
    }
}

// ---- LayerNorm, one invocation per row, vec4 loads (C % 4 == 0) ----
// A quarter of the storage accesses of the scalar form (each one is a per-lane loop on
// lavapipe) and four partial sums per quantity.

@group(0) @binding(1) var<storage, read> lx4: array<vec4<f32>>;           // (rows, C / 4)
@group(0) @binding(2) var<storage, read> lgamma4: array<vec4<f32>>;       // (C / 4)
@group(0) @binding(3) var<storage, read> lbeta4: array<vec4<f32>>;        // (C / 4)
@group(0) @binding(4) var<storage, read_write> ly4: array<vec4<f32>>;     // (rows, C / 4)
@group(0) @binding(5) var<storage, read> dg4: array<vec4<f32>>;           // (rows, C / 4) gradient of y
@group(0) @binding(6) var<storage, read_write> ddx4: array<vec4<f32>>;    // (rows, C / 4) gradient of x

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

@compute @workgroup_size(WG_ROWS)
fn layernorm_forward_inv4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= lp.rows { return; }
    let base = r * (lp.cols / 4u);
    let end = base + lp.cols / 4u;
    let inv_c = 1.0 / f32(lp.cols);
    let x0 = lx4[base].x;
    var s = vec4<f32>(0.0);
    for (var i = base; i < end; i++) { s += lx4[i] - x0; }
    let mean = x0 + hsum(s) * inv_c;
    var q = vec4<f32>(0.0);
    for (var i = base; i < end; i++) {
        let d = lx4[i] - mean;
        q += d * d;
    }
    let rstd = 1.0 / sqrt(hsum(q) * inv_c + lp.eps);
    for (var i = base; i < end; i++) {
        let c = i - base;
        ly4[i] = (lx4[i] - mean) * rstd * lgamma4[c] + lbeta4[c];
    }
    lmean[r] = mean;
    lrstd[r] = rstd;
}

@compute @workgroup_size(WG_ROWS)
fn layernorm_backward_dx_inv4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= lp.rows { return; }
    let base = r * (lp.cols / 4u);
    let end = base + lp.cols / 4u;
    let mean = dmean[r];
    let rstd = drstd[r];
    var sh = vec4<f32>(0.0);
    var shx = vec4<f32>(0.0);
    for (var i = base; i < end; i++) {
        let h = dg4[i] * lgamma4[i - base];
        sh += h;
        shx += h * ((lx4[i] - mean) * rstd);
    }
    let inv_c = 1.0 / f32(lp.cols);
    let mh = hsum(sh) * inv_c;
    let mhx = hsum(shx) * inv_c;
    for (var i = base; i < end; i++) {
        let h = dg4[i] * lgamma4[i - base];
        let xhat = (lx4[i] - mean) * rstd;
        ddx4[i] = rstd * (h - mh - xhat * mhx);
    }
}

// ---- Residual add + LayerNorm ----
// sum = x + res and y = LayerNorm(sum) in one pass over the row (the transformer's
// `x = x + f(x); h = ln(x)`), saving mean and rstd of sum. Its backward for sum adds the
// gradient that reached sum from its other use (the next residual add) to LayerNorm's dx, so
// neither the forward add nor the backward accumulation is a dispatch of its own. The
// arithmetic after the add is the LayerNorm kernels' above, operation for operation.

@group(0) @binding(7) var<storage, read> lres: array<f32>;          // (rows, C) forward: the residual branch; backward: the gradient of sum from its other use
@group(0) @binding(8) var<storage, read_write> lsum: array<f32>;    // (rows, C) x + res

@compute @workgroup_size(WG)
fn add_layernorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if r >= lp.rows { return; }
    let base = r * lp.cols;
    let inv_c = 1.0 / f32(lp.cols);
    var s = 0.0;
    for (var c = lid; c < lp.cols; c += WG) {
        let v = lx[base + c] + lres[base + c];
        lsum[base + c] = v;
        s += v;
    }
    let mean = reduce2(vec2<f32>(s, 0.0), lid).x * inv_c;
    var q = 0.0;
    for (var c = lid; c < lp.cols; c += WG) {
        let d = lsum[base + c] - mean;
        q += d * d;
    }
    let variance = reduce2(vec2<f32>(q, 0.0), lid).x * inv_c;
    let rstd = 1.0 / sqrt(variance + lp.eps);
    for (var c = lid; c < lp.cols; c += WG) {
        ly[base + c] = (lsum[base + c] - mean) * rstd * lgamma[c] + lbeta[c];
    }
    if lid == 0u {
        lmean[r] = mean;
        lrstd[r] = rstd;
    }
}

// dsum = LayerNorm's dx + the gradient from sum's other use (lres).
@compute @workgroup_size(WG)
fn layernorm_backward_dx_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if r >= lp.rows { return; }
    let base = r * lp.cols;
    let mean = dmean[r];
    let rstd = drstd[r];
    var acc = vec2<f32>(0.0, 0.0);
    for (var c = lid; c < lp.cols; c += WG) {
        let h = dg[base + c] * lgamma[c];
        let xhat = (lx[base + c] - mean) * rstd;
        acc += vec2<f32>(h, h * xhat);
    }
    let m = reduce2(acc, lid) * (1.0 / f32(lp.cols));
    for (var c = lid; c < lp.cols; c += WG) {
        let h = dg[base + c] * lgamma[c];
        let xhat = (lx[base + c] - mean) * rstd;
        ddx[base + c] = rstd * (h - m.x - xhat * m.y) + lres[base + c];
    }
}

@compute @workgroup_size(WG_ROWS)
fn add_layernorm_forward_inv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= lp.rows { return; }
    let base = r * lp.cols;
    let end = base + lp.cols;
    let inv_c = 1.0 / f32(lp.cols);
    let x0 = lx[base] + lres[base];
    var s = 0.0;
    for (var i = base; i < end; i++) {
        let v = lx[i] + lres[i];
        lsum[i] = v;
        s += v - x0;
    }
    let mean = x0 + s * inv_c;
    var q = 0.0;
    for (var i = base; i < end; i++) {
        let d = lsum[i] - mean;
        q += d * d;
    }
    let rstd = 1.0 / sqrt(q * inv_c + lp.eps);
    for (var i = base; i < end; i++) {
        let c = i - base;
        ly[i] = (lsum[i] - mean) * rstd * lgamma[c] + lbeta[c];
    }
    lmean[r] = mean;
    lrstd[r] = rstd;
}

@compute @workgroup_size(WG_ROWS)
fn layernorm_backward_dx_add_inv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= lp.rows { return; }
    let base = r * lp.cols;
    let end = base + lp.cols;
    let mean = dmean[r];
    let rstd = drstd[r];
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = base; i < end; i++) {
        let h = dg[i] * lgamma[i - base];
        let xhat = (lx[i] - mean) * rstd;
        acc += vec2<f32>(h, h * xhat);
    }
    let m = acc * (1.0 / f32(lp.cols));
    for (var i = base; i < end; i++) {
        let h = dg[i] * lgamma[i - base];
        let xhat = (lx[i] - mean) * rstd;
        ddx[i] = rstd * (h - m.x - xhat * m.y) + lres[i];
    }
}

@group(0) @binding(7) var<storage, read> lres4: array<vec4<f32>>;          // (rows, C / 4)
@group(0) @binding(8) var<storage, read_write> lsum4: array<vec4<f32>>;    // (rows, C / 4)

@compute @workgroup_size(WG_ROWS)
fn add_layernorm_forward_inv4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= lp.rows { return; }
    let base = r * (lp.cols / 4u);
    let end = base + lp.cols / 4u;
    let inv_c = 1.0 / f32(lp.cols);
    let x0 = lx4[base].x + lres4[base].x;
    var s = vec4<f32>(0.0);
    for (var i = base; i < end; i++) {
        let v = lx4[i] + lres4[i];
        lsum4[i] = v;
        s += v - x0;
    }
    let mean = x0 + hsum(s) * inv_c;
    var q = vec4<f32>(0.0);
    for (var i = base; i < end; i++) {
        let d = lsum4[i] - mean;
        q += d * d;
    }
    let rstd = 1.0 / sqrt(hsum(q) * inv_c + lp.eps);
    for (var i = base; i < end; i++) {
        let c = i - base;
        ly4[i] = (lsum4[i] - mean) * rstd * lgamma4[c] + lbeta4[c];
    }
    lmean[r] = mean;
    lrstd[r] = rstd;
}

@compute @workgroup_size(WG_ROWS)
fn layernorm_backward_dx_add_inv4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= lp.rows { return; }
    let base = r * (lp.cols / 4u);
    let end = base + lp.cols / 4u;
    let mean = dmean[r];
    let rstd = drstd[r];
    var sh = vec4<f32>(0.0);
    var shx = vec4<f32>(0.0);
    for (var i = base; i < end; i++) {
        let h = dg4[i] * lgamma4[i - base];
        sh += h;
        shx += h * ((lx4[i] - mean) * rstd);
    }
    let inv_c = 1.0 / f32(lp.cols);
    let mh = hsum(sh) * inv_c;
    let mhx = hsum(shx) * inv_c;
    for (var i = base; i < end; i++) {
        let h = dg4[i] * lgamma4[i - base];
        let xhat = (lx4[i] - mean) * rstd;
        ddx4[i] = rstd * (h - mh - xhat * mhx) + lres4[i];
    }
}

// backward: dgamma, dbeta partials
@group(0) @binding(2) var<storage, read> pmean: array<f32>;           // (rows)
@group(0) @binding(3) var<storage, read> prstd: array<f32>;           // (rows)
@group(0) @binding(4) var<storage, read> pg: array<f32>;              // (rows, C) gradient of y
@group(0) @binding(5) var<storage, read_write> pdgamma: array<f32>;   // (chunks, C)
@group(0) @binding(6) var<storage, read_write> pdbeta: array<f32>;    // (chunks, C)

// Invocation (k, c) sums rows [k * chunk, (k + 1) * chunk) of column c, in order. Neighbouring
// invocations read neighbouring columns (contiguous loads). No atomics.
@compute @workgroup_size(WG)
fn layernorm_backward_params(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let o = flat(wid, nwg, lid);
    if o >= lp.n { return; }
    let k = o / lp.cols;
    let c = o % lp.cols;
    let r0 = k * lp.chunk;
    let r1 = min(r0 + lp.chunk, lp.rows);
    var sg = 0.0;
    var sb = 0.0;
    for (var r = r0; r < r1; r++) {
        let i = r * lp.cols + c;
        let g = pg[i];
        sb += g;
        sg += g * (lx[i] - pmean[r]) * prstd[r];
    }
    pdgamma[o] = sg;
    pdbeta[o] = sb;
}

// Same with vec4 loads when C % 4 == 0: invocation (k, c4) sums columns 4 c4 .. 4 c4 + 3
// (a quarter of the storage accesses; n = chunks * C / 4).
@group(0) @binding(1) var<storage, read> px4: array<vec4<f32>>;            // (rows, C / 4)
@group(0) @binding(4) var<storage, read> pg4: array<vec4<f32>>;            // (rows, C / 4)
@group(0) @binding(5) var<storage, read_write> pdgamma4: array<vec4<f32>>; // (chunks, C / 4)
@group(0) @binding(6) var<storage, read_write> pdbeta4: array<vec4<f32>>;  // (chunks, C / 4)

@compute @workgroup_size(WG)
fn layernorm_backward_params4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let o = flat(wid, nwg, lid);
    if o >= lp.n { return; }
    let c4 = lp.cols / 4u;
    let k = o / c4;
    let c = o % c4;
    let r0 = k * lp.chunk;
    let r1 = min(r0 + lp.chunk, lp.rows);
    var sg = vec4<f32>(0.0);
    var sb = vec4<f32>(0.0);
    for (var r = r0; r < r1; r++) {
        let i = r * c4 + c;
        let g = pg4[i];
        sb += g;
        sg += g * (px4[i] - pmean[r]) * prstd[r];
    }
    pdgamma4[o] = sg;
    pdbeta4[o] = sb;
}

// ---- Dropout ----

struct Dropout {
    n: u32,          // elements
    threshold: u32,  // keep iff hash >= threshold (threshold = p * 2^32)
    k0: u32,         // three 32-bit keys derived from the seed on the host
    k1: u32,
    k2: u32,
    scale: f32,      // 1 / (1 - p)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> dp: Dropout;
@group(0) @binding(1) var<storage, read> dx_in: array<f32>;        // (n) input (or gradient of the output)
@group(0) @binding(2) var<storage, read_write> dy_out: array<f32>; // (n) output (or gradient of the input)

// PCG hash (Jarzynski & Olano, 2020): a bijection of u32.
fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Three keyed rounds, so masks of different seeds are not index permutations of each other.
fn mask_bits(i: u32) -> u32 {
    return pcg(pcg(pcg(i ^ dp.k0) ^ dp.k1) ^ dp.k2);
}

// y = x * mask / (1 - p). Run on the output gradient it gives the input gradient.
@compute @workgroup_size(WG)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i >= dp.n { return; }
    var v = 0.0;
    if mask_bits(i) >= dp.threshold { v = dx_in[i] * dp.scale; }
    dy_out[i] = v;
}
