// Losses and metrics, each a fused, numerically stable forward and backward. Every result is a
// mean written to a one-element buffer by deterministic reductions (fixed trees, fixed chunks;
// no atomics). Backward kernels read the upstream scalar gradient from its buffer.
// - Elementwise: mean squared error, binary cross-entropy on logits, binary accuracy.
// - Rows: sparse categorical cross-entropy from logits and u32 ids (fused log-softmax + NLL,
//   optional ignore index, mean over the counted rows), multi-class accuracy. Their row kernels
//   come in two forms here (chosen in src/ops/rows.rs): one workgroup per row with a tree
//   in workgroup memory (GPUs, long rows), and `*_inv`, one invocation per row looping over its
//   columns without barriers (CPU adapters); the one-subgroup-per-row form is in
//   loss_subgroup.wgsl.

const WG: u32 = 256u;
const WG_ROWS: u32 = 64u;
const KIND_MSE: u32 = 0u;
const KIND_BCE: u32 = 1u;
const KIND_BINARY_ACCURACY: u32 = 2u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

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

// log(1 + u) for u in [0, 1], accurate for small u (WGSL has no log1p).
fn log1p_small(u: f32) -> f32 {
    if u < 0.0625 {
        // Series to u^7: relative error below 1e-9 on [0, 1/16).
        return u * (1.0 - u * (0.5 - u * (1.0 / 3.0 - u * (0.25 - u * (0.2 - u * (1.0 / 6.0 - u * (1.0 / 7.0)))))));
    }
    return log(1.0 + u);
}

// Logistic sigmoid without overflow for any z.
fn sigmoid(z: f32) -> f32 {
    let e = exp(-abs(z));
    if z >= 0.0 { return 1.0 / (1.0 + e); }
    return e / (1.0 + e);
}

// ---- elementwise losses ----

struct Elem {
    n: u32,      // elements
    chunk: u32,  // elements per workgroup of the partial pass
    kind: u32,   // KIND_* (= KIND)
    parts: u32,  // workgroups of the partial pass
    scale: f32,  // 1 / n, applied by whichever pass writes the final value
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// The elementwise loss, fixed per pipeline (a CPU adapter runs every branch of a switch on a
// uniform value masked).
override KIND: u32 = 0u;

@group(0) @binding(0) var<uniform> ep: Elem;
@group(0) @binding(1) var<storage, read> ex: array<f32>;          // (n) input / logits
@group(0) @binding(2) var<storage, read> et: array<f32>;          // (n) targets
@group(0) @binding(3) var<storage, read_write> epart: array<f32>; // (parts) partial sums; () the mean when parts == 1

// One element's term of the mean.
fn elem_term(x: f32, t: f32) -> f32 {
    switch KIND {
        case KIND_MSE: {
            let d = x - t;
            return d * d;
        }
        case KIND_BCE: {
            // max(z, 0) - z t + log1p(exp(-|z|)), with max(z, 0) - z t written without cancellation.
            var lin = -x * t;
            if x >= 0.0 { lin = x * (1.0 - t); }
            return lin + log1p_small(exp(-abs(x)));
        }
        default: {
            // binary accuracy: logit > 0 predicts 1, targets above 0.5 are 1.
            return select(0.0, 1.0, (x > 0.0) == (t > 0.5));
        }
    }
}

// Workgroup k sums the terms of elements [k * chunk, (k + 1) * chunk).
@compute @workgroup_size(WG)
fn elem_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wid.y * nwg.x + wid.x;
    if k >= ep.parts { return; }
    let start = k * ep.chunk;
    let end = min(start + ep.chunk, ep.n);
    var s = 0.0;
    for (var i = start + lid; i < end; i += WG) { s += elem_term(ex[i], et[i]); }
    let total = reduce2(vec2<f32>(s, 0.0), lid).x;
    if lid == 0u {
        if ep.parts == 1u {
            epart[0] = total * ep.scale;
        } else {
            epart[k] = total;
        }
    }
}

// The same partial sums with one invocation per chunk, looping over it in order (CPU adapters:
// no barriers). The loop bound comes from the invocation's chunk, not from uniforms alone.
@compute @workgroup_size(WG_ROWS)
fn elem_partial_inv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = (wid.y * nwg.x + wid.x) * WG_ROWS + lid;
    if k >= ep.parts { return; }
    let start = k * ep.chunk;
    let end = min(start + ep.chunk, ep.n);
    var s = 0.0;
    for (var i = start; i < end; i++) { s += elem_term(ex[i], et[i]); }
    if ep.parts == 1u {
        epart[0] = s * ep.scale;
    } else {
        epart[k] = s;
    }
}

@group(0) @binding(3) var<storage, read> eg: array<f32>;           // () upstream gradient of the loss
@group(0) @binding(4) var<storage, read_write> edx: array<f32>;    // (n) gradient of the input

// d/dx of mean(term): mse 2 (x - t) / n; bce (sigmoid(z) - t) / n.
@compute @workgroup_size(WG)
fn elem_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i >= ep.n { return; }
    let x = ex[i];
    let t = et[i];
    var d = 0.0;
    if KIND == KIND_MSE {
        d = 2.0 * (x - t);
    } else {
        d = sigmoid(x) - t;
    }
    edx[i] = eg[0] * ep.scale * d;
}

// ---- final sum of partials ----

struct Finish {
    n: u32,      // values to sum
    scale: f32,  // multiplies the sum
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> fp: Finish;
@group(0) @binding(1) var<storage, read> fin: array<f32>;         // (n)
@group(0) @binding(2) var<storage, read_write> fout: array<f32>;  // ()

// One workgroup: invocation l sums values l, l + WG, ... in order, then a fixed tree.
@compute @workgroup_size(WG)
fn finish_sum(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < fp.n; i += WG) { s += fin[i]; }
    let total = reduce2(vec2<f32>(s, 0.0), lid).x;
    if lid == 0u { fout[0] = total * fp.scale; }
}

// ---- cross-entropy and accuracy over rows of (rows, C) ----

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

var<workgroup> shm: array<f32, WG>;
var<workgroup> shi: array<u32, WG>;

fn reduce_max(v: f32, lid: u32) -> f32 {
    shm[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s { shm[lid] = max(shm[lid], shm[lid + s]); }
        workgroupBarrier();
    }
    let r = shm[0];
    workgroupBarrier();
    return r;
}

// One workgroup per row: lse = m + log(sum exp(z - m)); loss = (m - z_t) + log(sum), which keeps
// small losses precise next to large logits. Ignored rows give (0, 0); an out-of-range target NaN.
@compute @workgroup_size(WG)
fn ce_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if r >= rp.rows { return; }
    let base = r * rp.cols;
    var m = cz[base + min(lid, rp.cols - 1u)];
    for (var c = lid; c < rp.cols; c += WG) { m = max(m, cz[base + c]); }
    m = reduce_max(m, lid);
    var s = 0.0;
    for (var c = lid; c < rp.cols; c += WG) { s += exp(cz[base + c] - m); }
    s = reduce2(vec2<f32>(s, 0.0), lid).x;
    if lid == 0u {
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

@group(0) @binding(1) var<storage, read> fstat: array<vec2<f32>>;  // (rows) (loss, counted)
@group(0) @binding(2) var<storage, read_write> floss: array<f32>;  // () mean over counted rows
@group(0) @binding(3) var<storage, read_write> fcount: array<f32>; // () counted rows

// One workgroup. All rows ignored: loss 0 (and, in the backward, zero gradient).
@compute @workgroup_size(WG)
fn ce_finish(@builtin(local_invocation_index) lid: u32) {
    var s = vec2<f32>(0.0, 0.0);
    for (var i = lid; i < rp.rows; i += WG) { s += fstat[i]; }
    let total = reduce2(s, lid);
    if lid == 0u {
        var loss = 0.0;
        if total.y > 0.0 { loss = total.x / total.y; }
        floss[0] = loss;
        fcount[0] = total.y;
    }
}

@group(0) @binding(3) var<storage, read> blse: array<f32>;        // (rows) saved log-sum-exp
@group(0) @binding(4) var<storage, read> bcount: array<f32>;      // () counted rows
@group(0) @binding(5) var<storage, read> bgl: array<f32>;         // () upstream gradient of the loss
@group(0) @binding(6) var<storage, read_write> bdz: array<f32>;   // (rows, C) gradient of the logits

// dz = g / count * (softmax(z) - onehot(t)) on counted rows, 0 on ignored rows.
@compute @workgroup_size(WG)
fn ce_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i >= rp.n { return; }
    let r = i / rp.cols;
    let c = i % rp.cols;
    let t = ct[r];
    let count = bcount[0];
    var d = 0.0;
    if count > 0.0 && !(rp.has_ignore == 1u && t == rp.ignore) {
        d = exp(cz[i] - blse[r]) - select(0.0, 1.0, c == t);
        d *= bgl[0] / count;
    }
    bdz[i] = d;
}

@group(0) @binding(3) var<storage, read_write> acorrect: array<f32>; // (rows) 1 where argmax == target

// One workgroup per row: the first index of the row maximum, compared with the target.
@compute @workgroup_size(WG)
fn accuracy_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if r >= rp.rows { return; }
    let base = r * rp.cols;
    var best = cz[base + min(lid, rp.cols - 1u)];
    var arg = min(lid, rp.cols - 1u);
    for (var c = lid; c < rp.cols; c += WG) {
        let v = cz[base + c];
        if v > best { best = v; arg = c; }
    }
    shm[lid] = best;
    shi[lid] = arg;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            let v = shm[lid + s];
            let a = shi[lid + s];
            if v > shm[lid] || (v == shm[lid] && a < shi[lid]) {
                shm[lid] = v;
                shi[lid] = a;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u { acorrect[r] = select(0.0, 1.0, shi[0] == ct[r]); }
}

// ---- cross-entropy and accuracy rows, one invocation per row ----
// Loop bounds derive from the row's first index, not from uniforms alone (lavapipe specialises
// shaders on uniforms that decide loop conditions).

fn row_inv(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG_ROWS + lid;
}

// Same results as ce_rows.
@compute @workgroup_size(WG_ROWS)
fn ce_rows_inv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= rp.rows { return; }
    let base = r * rp.cols;
    let end = base + rp.cols;
    var m = cz[base];
    for (var i = base + 1u; i < end; i++) { m = max(m, cz[i]); }
    var s = 0.0;
    for (var i = base; i < end; i++) { s += exp(cz[i] - m); }
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

// Same results as accuracy_rows: the first index of the row maximum against the target.
@compute @workgroup_size(WG_ROWS)
fn accuracy_rows_inv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= rp.rows { return; }
    let base = r * rp.cols;
    let end = base + rp.cols;
    var best = cz[base];
    var arg = base;
    for (var i = base + 1u; i < end; i++) {
        let v = cz[i];
        if v > best { best = v; arg = i; }
    }
    acorrect[r] = select(0.0, 1.0, arg - base == ct[r]);
}
