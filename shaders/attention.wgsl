// Fused multi-head scaled dot-product attention on (B, H, T, D) tensors, FlashAttention-2 style:
// online softmax over key tiles in the forward pass (no (T, T) matrix anywhere), the backward
// pass recomputes the scores tile by tile from the saved log-sum-exp, and writes dQ (one kernel
// over query rows) and dK, dV (one kernel over key rows) without atomics, so it is deterministic.
// Also here: the KV-cache append and decode kernels, and the head split / merge permutations.
//
// The row kernels here are the portable ones: each invocation owns one row (a query row in the
// forward and dQ kernels, a key row in the dK/dV kernel), keeps it and its accumulators in
// private arrays, and walks the other side in tiles of TW rows read straight from storage. All
// invocations of a workgroup read the same tile rows at about the same time, so on a GPU the
// caches serve them (a broadcast load). On CPU adapters (lavapipe) the launcher appends
// straight-line kernels generated per head size that exchange tiles through subgroup
// broadcasts instead (src/ops/attention/launch.rs, `mod cpu`); on GPUs it appends the tiled
// kernels of attention_tiled.wgsl, which stage the tiles in workgroup memory.
// Scores are kept in base-2 units (q pre-scaled by scale * log2 e) so the softmax uses exp2.

override D4: u32 = 16u;   // head size D / 4 (D % 4 == 0, D <= 4 * MAXC)
override WG: u32 = 64u;   // invocations (rows) per workgroup of the row kernels
override DWG: u32 = 64u;  // invocations per workgroup of the decode kernel (a power of two <= 64)

const MAXC: u32 = 32u;    // largest D4 (D = 128)
const TW: u32 = 8u;       // rows per tile (one online-softmax step)
const LOG2E: f32 = 1.4426950408889634;
const LN2: f32 = 0.6931471805599453;
const NEG: f32 = -1.0e30; // "minus infinity" that never produces inf - inf
const LWG: u32 = 256u;    // invocations per workgroup of the layout kernels

struct Attn {
    bh: u32,       // B * H
    t: u32,        // query rows per (b, h)
    tk: u32,       // key rows per (b, h) that are attended (T, or the cache length)
    kstride: u32,  // key rows allocated per (b, h) (T, or the cache's maximum length)
    causal: u32,   // 1: query row r sees key rows <= r + qoff
    qoff: u32,     // key position of query row 0 (decode: cache length - new rows)
    blocks: u32,   // workgroups per (b, h) of the row kernels
    scale: f32,    // 1 / sqrt(D)
    n: u32,        // units moved by the layout / append kernels
    heads: u32,    // H
    slot: u32,     // which C-wide column block of the (B, T, slots * C) side
    slots: u32,    // column blocks on the (B, T, slots * C) side (3 for a fused QKV)
    du: u32,       // units (f32 or vec4) per head row
    pos: u32,      // first cache row written by an append
    rows: u32,     // rows appended per (b, h)
    group: u32,    // query heads per K/V head (grouped-query attention; 1: one K/V head each)
}

@group(0) @binding(0) var<uniform> p: Attn;

// ---- bindings of the row kernels (forward, dQ, dK/dV) and of decode ----
@group(0) @binding(1) var<storage, read> q4: array<vec4<f32>>;          // (B, H, T, D)
@group(0) @binding(2) var<storage, read> k4: array<vec4<f32>>;          // (B, H / group, kstride, D)
@group(0) @binding(3) var<storage, read> v4: array<vec4<f32>>;          // (B, H / group, kstride, D)
// forward / decode outputs
@group(0) @binding(4) var<storage, read_write> o_out: array<vec4<f32>>; // (B, H, T, D)
@group(0) @binding(5) var<storage, read_write> lse_out: array<f32>;     // (B, H, T) natural log
// backward inputs shared by dQ and dK/dV
@group(0) @binding(4) var<storage, read> do4: array<vec4<f32>>;         // (B, H, T, D) dL/dO
@group(0) @binding(5) var<storage, read> lse_in: array<f32>;            // (B, H, T)
// dQ kernel
@group(0) @binding(6) var<storage, read> o_in: array<vec4<f32>>;        // (B, H, T, D) forward O
@group(0) @binding(7) var<storage, read_write> grad_a: array<vec4<f32>>;// (B, H, T, D) dQ or (B, H / group, T, D) dK
@group(0) @binding(8) var<storage, read_write> delta_out: array<f32>;   // (B, H, T) rowsum(dO * O)
// dK/dV kernel
@group(0) @binding(6) var<storage, read> delta_in: array<f32>;          // (B, H, T)
@group(0) @binding(8) var<storage, read_write> grad_v: array<vec4<f32>>;// (B, H / group, T, D) dV

fn flat_wg(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// Forward: this invocation owns query row `row` of head bh = wg / blocks.
@compute @workgroup_size(WG)
fn attn_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wg = flat_wg(wid, nwg);
    let bh = wg / p.blocks;
    let row = (wg % p.blocks) * WG + lid;
    if bh >= p.bh || row >= p.t { return; }
    let qb = bh * p.t;
    let kb = (bh / p.group) * p.kstride; // the K/V head of query head bh
    var kend = p.tk;
    if p.causal != 0u { kend = min(p.tk, row + p.qoff + 1u); }

    let qs = p.scale * LOG2E;
    var qr: array<vec4<f32>, MAXC>;
    for (var c = 0u; c < D4; c++) { qr[c] = q4[(qb + row) * D4 + c] * qs; }
    var acc: array<vec4<f32>, MAXC>;
    var m = NEG;
    var l = 0.0;
    for (var j0 = 0u; j0 < kend; j0 += TW) {
        // Rows of this tile, clamped into range (masked below).
        var kr: array<u32, TW>;
        for (var i = 0u; i < TW; i++) { kr[i] = (kb + min(j0 + i, kend - 1u)) * D4; }
        var s: array<f32, TW>;
        for (var c = 0u; c < D4; c++) {
            let qc = qr[c];
            for (var i = 0u; i < TW; i++) { s[i] += dot(qc, k4[kr[i] + c]); }
        }
        var mt = m;
        for (var i = 0u; i < TW; i++) {
            if j0 + i < kend { mt = max(mt, s[i]); }
        }
        let corr = exp2(m - mt);
        var pr: array<f32, TW>;
        var ls = 0.0;
        for (var i = 0u; i < TW; i++) {
            pr[i] = select(0.0, exp2(s[i] - mt), j0 + i < kend);
            ls += pr[i];
        }
        l = l * corr + ls;
        m = mt;
        for (var c = 0u; c < D4; c++) {
            var a = acc[c] * corr;
            for (var i = 0u; i < TW; i++) { a = fma(vec4<f32>(pr[i]), v4[kr[i] + c], a); }
            acc[c] = a;
        }
    }
    let inv = 1.0 / l;
    for (var c = 0u; c < D4; c++) { o_out[(qb + row) * D4 + c] = acc[c] * inv; }
    lse_out[qb + row] = (m + log2(l)) * LN2;
}

// dQ and delta: this invocation owns query row `row`.
//   delta = rowsum(dO * O), P = exp(S - lse), dS = P * (dO . V - delta), dQ = scale * dS K
@compute @workgroup_size(WG)
fn attn_bwd_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wg = flat_wg(wid, nwg);
    let bh = wg / p.blocks;
    let row = (wg % p.blocks) * WG + lid;
    if bh >= p.bh || row >= p.t { return; }
    let qb = bh * p.t;
    let kb = (bh / p.group) * p.kstride; // the K/V head of query head bh
    var kend = p.tk;
    if p.causal != 0u { kend = min(p.tk, row + p.qoff + 1u); }

    let qs = p.scale * LOG2E;
    var qr: array<vec4<f32>, MAXC>;
    var dr: array<vec4<f32>, MAXC>;
    var dl = vec4<f32>(0.0);
    for (var c = 0u; c < D4; c++) {
        let at = (qb + row) * D4 + c;
        qr[c] = q4[at] * qs;
        dr[c] = do4[at];
        dl = fma(dr[c], o_in[at], dl);
    }
    let delta = dl.x + dl.y + dl.z + dl.w;
    let lse2 = lse_in[qb + row] * LOG2E;
    var dq: array<vec4<f32>, MAXC>;
    for (var j0 = 0u; j0 < kend; j0 += TW) {
        var kr: array<u32, TW>;
        for (var i = 0u; i < TW; i++) { kr[i] = (kb + min(j0 + i, kend - 1u)) * D4; }
        var s: array<f32, TW>;
        var dp: array<f32, TW>;
        for (var c = 0u; c < D4; c++) {
            let qc = qr[c];
            let dc = dr[c];
            for (var i = 0u; i < TW; i++) {
                s[i] += dot(qc, k4[kr[i] + c]);
                dp[i] += dot(dc, v4[kr[i] + c]);
            }
        }
        var ds: array<f32, TW>;
        for (var i = 0u; i < TW; i++) {
            ds[i] = select(0.0, exp2(s[i] - lse2) * (dp[i] - delta), j0 + i < kend);
        }
        for (var c = 0u; c < D4; c++) {
            var a = dq[c];
            for (var i = 0u; i < TW; i++) { a = fma(vec4<f32>(ds[i]), k4[kr[i] + c], a); }
            dq[c] = a;
        }
    }
    for (var c = 0u; c < D4; c++) { grad_a[(qb + row) * D4 + c] = dq[c] * p.scale; }
    delta_out[qb + row] = delta;
}

// dK and dV: this invocation owns key row `row` of K/V head bh (p.bh = B * H / group here) and
// walks the query rows that see it, in each query head of its group.
//   dV = P^T dO, dK = scale * dS^T Q
@compute @workgroup_size(WG)
fn attn_bwd_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wg = flat_wg(wid, nwg);
    let bh = wg / p.blocks;
    let row = (wg % p.blocks) * WG + lid;
    if bh >= p.bh || row >= p.tk { return; }
    let kb = bh * p.kstride;
    // Query i sees key j when j <= i + qoff: with causal masking the first is j - qoff.
    var i_start = 0u;
    if p.causal != 0u && row > p.qoff { i_start = row - p.qoff; }

    let qs = p.scale * LOG2E;
    var kr: array<vec4<f32>, MAXC>;
    var vr: array<vec4<f32>, MAXC>;
    for (var c = 0u; c < D4; c++) {
        kr[c] = k4[(kb + row) * D4 + c] * qs;
        vr[c] = v4[(kb + row) * D4 + c];
    }
    var dk: array<vec4<f32>, MAXC>;
    var dv: array<vec4<f32>, MAXC>;
    // dK and dV sum over the query heads that share this K/V head.
    for (var g = 0u; g < p.group; g++) {
        let qb = (bh * p.group + g) * p.t;
        for (var i0 = i_start; i0 < p.t; i0 += TW) {
            var qi: array<u32, TW>;
            for (var i = 0u; i < TW; i++) { qi[i] = qb + min(i0 + i, p.t - 1u); }
            var s: array<f32, TW>;
            var dp: array<f32, TW>;
            for (var c = 0u; c < D4; c++) {
                let kc = kr[c];
                let vc = vr[c];
                for (var i = 0u; i < TW; i++) {
                    s[i] += dot(kc, q4[qi[i] * D4 + c]);
                    dp[i] += dot(vc, do4[qi[i] * D4 + c]);
                }
            }
            var pr: array<f32, TW>;
            var ds: array<f32, TW>;
            for (var i = 0u; i < TW; i++) {
                pr[i] = select(0.0, exp2(s[i] - lse_in[qi[i]] * LOG2E), i0 + i < p.t);
                ds[i] = pr[i] * (dp[i] - delta_in[qi[i]]);
            }
            for (var c = 0u; c < D4; c++) {
                var a = dk[c];
                var b = dv[c];
                for (var i = 0u; i < TW; i++) {
                    a = fma(vec4<f32>(ds[i]), q4[qi[i] * D4 + c], a);
                    b = fma(vec4<f32>(pr[i]), do4[qi[i] * D4 + c], b);
                }
                dk[c] = a;
                dv[c] = b;
            }
        }
    }
    for (var c = 0u; c < D4; c++) {
        grad_a[(kb + row) * D4 + c] = dk[c] * p.scale;
        grad_v[(kb + row) * D4 + c] = dv[c];
    }
}

// ---- decode: new query rows against a KV cache ----
// One workgroup per (b, h, query row); its DWG invocations split the cached keys between them,
// each keeps its own online-softmax state, and the states are merged once at the end.
var<workgroup> red_s: array<f32, 64>;             // (DWG)
var<workgroup> red_v: array<vec4<f32>, 512>;      // (DWG, 8) column chunks being summed

@compute @workgroup_size(DWG)
fn attn_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let flat = wid.y * nwg.x + wid.x;
    if flat >= p.bh * p.t { return; } // uniform across the workgroup
    let bh = flat / p.t;
    let r = flat % p.t;
    let kend = min(p.tk, p.qoff + r + 1u);
    let kb = (bh / p.group) * p.kstride; // the K/V head of query head bh
    let qs = p.scale * LOG2E;
    var qr: array<vec4<f32>, MAXC>;
    for (var c = 0u; c < D4; c++) { qr[c] = q4[flat * D4 + c] * qs; }
    var acc: array<vec4<f32>, MAXC>;
    var m = NEG;
    var l = 0.0;
    for (var j = lid; j < kend; j += DWG) {
        var s4 = vec4<f32>(0.0);
        for (var c = 0u; c < D4; c++) { s4 = fma(qr[c], k4[(kb + j) * D4 + c], s4); }
        let s = s4.x + s4.y + s4.z + s4.w;
        let mn = max(m, s);
        let corr = exp2(m - mn);
        let pj = exp2(s - mn);
        l = l * corr + pj;
        m = mn;
        for (var c = 0u; c < D4; c++) { acc[c] = fma(vec4<f32>(pj), v4[(kb + j) * D4 + c], acc[c] * corr); }
    }
    // Merge: the workgroup maximum, then sums of the rescaled l and acc.
    red_s[lid] = m;
    workgroupBarrier();
    var mx = NEG;
    for (var i = 0u; i < DWG; i++) { mx = max(mx, red_s[i]); }
    let f = exp2(m - mx); // 0 for an invocation that saw no key
    workgroupBarrier();
    red_s[lid] = l * f;
    workgroupBarrier();
    for (var h = DWG / 2u; h > 0u; h >>= 1u) {
        if lid < h { red_s[lid] += red_s[lid + h]; }
        workgroupBarrier();
    }
    let inv = 1.0 / red_s[0];
    for (var c0 = 0u; c0 < D4; c0 += 8u) {
        for (var c = 0u; c < 8u; c++) {
            red_v[lid * 8u + c] = select(vec4<f32>(0.0), acc[min(c0 + c, MAXC - 1u)] * f, c0 + c < D4);
        }
        workgroupBarrier();
        for (var h = DWG / 2u; h > 0u; h >>= 1u) {
            if lid < h {
                for (var c = 0u; c < 8u; c++) { red_v[lid * 8u + c] += red_v[(lid + h) * 8u + c]; }
            }
            workgroupBarrier();
        }
        if lid < 8u && c0 + lid < D4 { o_out[flat * D4 + c0 + lid] = red_v[lid] * inv; }
        workgroupBarrier();
    }
}

// ---- KV-cache append: rows pos .. pos + rows - 1 of every (b, h) ----
@group(0) @binding(1) var<storage, read> new_k: array<vec4<f32>>;          // (B, H, rows, D)
@group(0) @binding(2) var<storage, read> new_v: array<vec4<f32>>;          // (B, H, rows, D)
@group(0) @binding(3) var<storage, read_write> cache_k: array<vec4<f32>>;  // (B, H, kstride, D)
@group(0) @binding(4) var<storage, read_write> cache_v: array<vec4<f32>>;  // (B, H, kstride, D)

@compute @workgroup_size(LWG)
fn kv_append(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = (wid.y * nwg.x + wid.x) * LWG + lid;
    if u >= p.n { return; }
    let c = u % D4;
    let r = u / D4;
    let dst = ((r / p.rows) * p.kstride + p.pos + r % p.rows) * D4 + c;
    cache_k[dst] = new_k[u];
    cache_v[dst] = new_v[u];
}

// ---- head split / merge: (B, T, slots * C) <-> (B, H, T, D), C = H * D ----
// Units are vec4 when D % 4 == 0 (entry points ending in 4), else f32.
@group(0) @binding(1) var<storage, read> lay_in: array<f32>;            // source
@group(0) @binding(2) var<storage, read_write> lay_out: array<f32>;     // destination
@group(0) @binding(1) var<storage, read> lay_in4: array<vec4<f32>>;     // source
@group(0) @binding(2) var<storage, read_write> lay_out4: array<vec4<f32>>; // destination

// Unit u of the (B, H, T, D) side -> unit of the (B, T, slots * C) side, in column block p.slot.
fn rows_index(u: u32) -> u32 {
    let d = u % p.du;
    let x = u / p.du;
    let t = x % p.t;
    let bh = x / p.t;
    let h = bh % p.heads;
    let b = bh / p.heads;
    return ((b * p.t + t) * p.slots + p.slot) * p.heads * p.du + h * p.du + d;
}

// Unit u of the (B, T, slots * C) side -> unit of the (B, H, T, D) side, or 0xffffffff when it
// lies outside column block p.slot.
fn heads_index(u: u32) -> u32 {
    let d = u % p.du;
    var x = u / p.du;
    let h = x % p.heads;
    x /= p.heads;
    let s = x % p.slots;
    let bt = x / p.slots;
    if s != p.slot { return 0xffffffffu; }
    let t = bt % p.t;
    let b = bt / p.t;
    return ((b * p.heads + h) * p.t + t) * p.du + d;
}

fn lay_unit(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * LWG + lid;
}

// (B, T, slots * C) column block p.slot -> (B, H, T, D); one invocation per output unit.
@compute @workgroup_size(LWG)
fn rows_to_heads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = lay_unit(wid, nwg, lid);
    if u >= p.n { return; }
    lay_out[u] = lay_in[rows_index(u)];
}

@compute @workgroup_size(LWG)
fn rows_to_heads4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = lay_unit(wid, nwg, lid);
    if u >= p.n { return; }
    lay_out4[u] = lay_in4[rows_index(u)];
}

// (B, H, T, D) -> (B, T, slots * C), zero outside column block p.slot; one invocation per output unit.
@compute @workgroup_size(LWG)
fn heads_to_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = lay_unit(wid, nwg, lid);
    if u >= p.n { return; }
    let i = heads_index(u);
    var x = 0.0;
    if i != 0xffffffffu { x = lay_in[i]; }
    lay_out[u] = x;
}

@compute @workgroup_size(LWG)
fn heads_to_rows4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = lay_unit(wid, nwg, lid);
    if u >= p.n { return; }
    let i = heads_index(u);
    var x = vec4<f32>(0.0);
    if i != 0xffffffffu { x = lay_in4[i]; }
    lay_out4[u] = x;
}

// ---- (B, T, W) column range <-> (B, H, T, D): the split of a fused projection whose blocks
// differ in width (grouped-query attention: q H * D wide, k and v Hkv * D). Here p.slots is
// the row width W and p.slot the range's first column, both in units.

// Unit u of the (B, H, T, D) side -> unit of the (B, T, W) side.
fn cols_index(u: u32) -> u32 {
    let d = u % p.du;
    let x = u / p.du;
    let t = x % p.t;
    let bh = x / p.t;
    let h = bh % p.heads;
    let b = bh / p.heads;
    return (b * p.t + t) * p.slots + p.slot + h * p.du + d;
}

// Unit u of the (B, T, W) side -> unit of the (B, H, T, D) side, or 0xffffffff outside the range.
fn cols_heads_index(u: u32) -> u32 {
    let col = u % p.slots;
    let bt = u / p.slots;
    if col < p.slot || col >= p.slot + p.heads * p.du { return 0xffffffffu; }
    let h = (col - p.slot) / p.du;
    let d = (col - p.slot) % p.du;
    let t = bt % p.t;
    let b = bt / p.t;
    return ((b * p.heads + h) * p.t + t) * p.du + d;
}

@compute @workgroup_size(LWG)
fn cols_to_heads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = lay_unit(wid, nwg, lid);
    if u >= p.n { return; }
    lay_out[u] = lay_in[cols_index(u)];
}

@compute @workgroup_size(LWG)
fn cols_to_heads4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = lay_unit(wid, nwg, lid);
    if u >= p.n { return; }
    lay_out4[u] = lay_in4[cols_index(u)];
}

// (B, H, T, D) -> (B, T, W), zero outside the column range; one invocation per output unit.
@compute @workgroup_size(LWG)
fn heads_to_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = lay_unit(wid, nwg, lid);
    if u >= p.n { return; }
    let i = cols_heads_index(u);
    var x = 0.0;
    if i != 0xffffffffu { x = lay_in[i]; }
    lay_out[u] = x;
}

@compute @workgroup_size(LWG)
fn heads_to_cols4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = lay_unit(wid, nwg, lid);
    if u >= p.n { return; }
    let i = cols_heads_index(u);
    var x = vec4<f32>(0.0);
    if i != 0xffffffffu { x = lay_in4[i]; }
    lay_out4[u] = x;
}

// Three (B, H, T, D) tensors -> (B, T, 3 * C), tensor s in column block s: the gradient of a
// fused QKV projection in one pass. One invocation per output unit.
@group(0) @binding(2) var<storage, read> lay_b: array<f32>;               // (B, H, T, D) slot 1
@group(0) @binding(3) var<storage, read> lay_c: array<f32>;               // (B, H, T, D) slot 2
@group(0) @binding(4) var<storage, read_write> lay_o3: array<f32>;        // (B, T, 3 * C)
@group(0) @binding(2) var<storage, read> lay_b4: array<vec4<f32>>;        // (B, H, T, D) slot 1
@group(0) @binding(3) var<storage, read> lay_c4: array<vec4<f32>>;        // (B, H, T, D) slot 2
@group(0) @binding(4) var<storage, read_write> lay_o34: array<vec4<f32>>; // (B, T, 3 * C)

// Unit u of the (B, T, 3 * C) side -> (slot, unit of the (B, H, T, D) side).
fn heads3_index(u: u32) -> vec2<u32> {
    let d = u % p.du;
    var x = u / p.du;
    let h = x % p.heads;
    x /= p.heads;
    let s = x % 3u;
    let bt = x / 3u;
    let t = bt % p.t;
    let b = bt / p.t;
    return vec2<u32>(s, ((b * p.heads + h) * p.t + t) * p.du + d);
}

@compute @workgroup_size(LWG)
fn heads3_to_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = lay_unit(wid, nwg, lid);
    if u >= p.n { return; }
    let i = heads3_index(u);
    var x: f32;
    switch i.x {
        case 0u: { x = lay_in[i.y]; }
        case 1u: { x = lay_b[i.y]; }
        default: { x = lay_c[i.y]; }
    }
    lay_o3[u] = x;
}

@compute @workgroup_size(LWG)
fn heads3_to_rows4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = lay_unit(wid, nwg, lid);
    if u >= p.n { return; }
    let i = heads3_index(u);
    var x: vec4<f32>;
    switch i.x {
        case 0u: { x = lay_in4[i.y]; }
        case 1u: { x = lay_b4[i.y]; }
        default: { x = lay_c4[i.y]; }
    }
    lay_o34[u] = x;
}
