// Tiled attention kernels for GPUs (FlashAttention-2 style), appended to attention.wgsl (its
// struct, bindings and constants) by the launcher: src/ops/attention/launch.rs, plan "tiled".
//
// A workgroup owns BR = WG consecutive rows of one (b, h): query rows in the forward and dQ
// kernels, key rows in the dK/dV kernel. Invocation lid owns row lid of the block and keeps it
// and its accumulators in private arrays, as the portable kernels do. The other side is walked
// in blocks of BC rows staged cooperatively into workgroup memory (consecutive invocations load
// consecutive vec4s: coalesced), so each K/V (or Q/dO) element is read from storage once per
// workgroup instead of once per invocation, and every invocation then reads the same staged
// address at the same time (a broadcast, no bank conflicts): 4 FMAs per vec4 read.
// Two staged blocks of at most TILE vec4s: 2 * 512 * 16 = 16384 bytes, the WebGPU default
// maxComputeWorkgroupStorageSize. BC = TILE / D4 rounded down to a multiple of TW, at most 64
// (D = 64: 32 rows, D = 128: 16). Causal: blocks wholly past the workgroup's last visible key
// (or before the first query that sees its key rows) are never staged; within the diagonal
// block each invocation masks per row and skips whole TW steps it cannot see.
// No early return before the last barrier: rows past the end still help stage and wait.

override BC: u32 = 32u;   // rows per staged block (multiple of TW, BC * D4 <= TILE)

const TILE: u32 = 512u;   // vec4s per staged block

var<workgroup> tile_a: array<vec4<f32>, TILE>;  // (BC, D) K (forward, dQ) or Q (dK/dV)
var<workgroup> tile_b: array<vec4<f32>, TILE>;  // (BC, D) V (forward, dQ) or dO (dK/dV)

// Stage rows r0 .. r0 + BC of src_a / src_b (row `base + r`), zeros past `end`.
fn stage_kv(lid: u32, base: u32, r0: u32, end: u32) {
    for (var u = lid; u < BC * D4; u += WG) {
        let r = r0 + u / D4;
        var a = vec4<f32>(0.0);
        var b = vec4<f32>(0.0);
        if r < end {
            let at = (base + r) * D4 + u % D4;
            a = k4[at];
            b = v4[at];
        }
        tile_a[u] = a;
        tile_b[u] = b;
    }
}

fn stage_qdo(lid: u32, base: u32, r0: u32, end: u32) {
    for (var u = lid; u < BC * D4; u += WG) {
        let r = r0 + u / D4;
        var a = vec4<f32>(0.0);
        var b = vec4<f32>(0.0);
        if r < end {
            let at = (base + r) * D4 + u % D4;
            a = q4[at];
            b = do4[at];
        }
        tile_a[u] = a;
        tile_b[u] = b;
    }
}

// Forward: invocation lid owns query row q0 + lid of head bh.
@compute @workgroup_size(WG)
fn attn_fwd_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wg = flat_wg(wid, nwg);
    let bh = wg / p.blocks;
    if bh >= p.bh { return; } // uniform across the workgroup
    let q0 = (wg % p.blocks) * WG;
    let row = q0 + lid;
    let live = row < p.t;
    let rowc = min(row, p.t - 1u);
    let qb = bh * p.t;
    let kb = (bh / p.group) * p.kstride; // the K/V head of query head bh
    // Keys this row sees, and (uniform) keys any row of the workgroup sees.
    var kend = p.tk;
    var wend = p.tk;
    if p.causal != 0u {
        kend = min(p.tk, rowc + p.qoff + 1u);
        wend = min(p.tk, min(q0 + WG, p.t) + p.qoff);
    }

    let qs = p.scale * LOG2E;
    var qr: array<vec4<f32>, MAXC>;
    for (var c = 0u; c < D4; c++) { qr[c] = q4[(qb + rowc) * D4 + c] * qs; }
    var acc: array<vec4<f32>, MAXC>;
    var m = NEG;
    var l = 0.0;
    for (var j0 = 0u; j0 < wend; j0 += BC) {
        stage_kv(lid, kb, j0, wend);
        workgroupBarrier();
        for (var i0 = 0u; i0 < BC && j0 + i0 < kend; i0 += TW) {
            var s: array<f32, TW>;
            for (var c = 0u; c < D4; c++) {
                let qc = qr[c];
                for (var i = 0u; i < TW; i++) { s[i] += dot(qc, tile_a[(i0 + i) * D4 + c]); }
            }
            var mt = m;
            for (var i = 0u; i < TW; i++) {
                if j0 + i0 + i < kend { mt = max(mt, s[i]); }
            }
            let corr = exp2(m - mt);
            var pr: array<f32, TW>;
            var ls = 0.0;
            for (var i = 0u; i < TW; i++) {
                pr[i] = select(0.0, exp2(s[i] - mt), j0 + i0 + i < kend);
                ls += pr[i];
            }
            l = l * corr + ls;
            m = mt;
            for (var c = 0u; c < D4; c++) {
                var a = acc[c] * corr;
                for (var i = 0u; i < TW; i++) { a = fma(vec4<f32>(pr[i]), tile_b[(i0 + i) * D4 + c], a); }
                acc[c] = a;
            }
        }
        workgroupBarrier();
    }
    if live {
        let inv = 1.0 / l;
        for (var c = 0u; c < D4; c++) { o_out[(qb + row) * D4 + c] = acc[c] * inv; }
        lse_out[qb + row] = (m + log2(l)) * LN2;
    }
}

// dQ and delta: invocation lid owns query row q0 + lid (formulas as in attn_bwd_dq).
@compute @workgroup_size(WG)
fn attn_bwd_dq_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wg = flat_wg(wid, nwg);
    let bh = wg / p.blocks;
    if bh >= p.bh { return; } // uniform across the workgroup
    let q0 = (wg % p.blocks) * WG;
    let row = q0 + lid;
    let live = row < p.t;
    let rowc = min(row, p.t - 1u);
    let qb = bh * p.t;
    let kb = (bh / p.group) * p.kstride; // the K/V head of query head bh
    var kend = p.tk;
    var wend = p.tk;
    if p.causal != 0u {
        kend = min(p.tk, rowc + p.qoff + 1u);
        wend = min(p.tk, min(q0 + WG, p.t) + p.qoff);
    }

    let qs = p.scale * LOG2E;
    var qr: array<vec4<f32>, MAXC>;
    var dr: array<vec4<f32>, MAXC>;
    var dl = vec4<f32>(0.0);
    for (var c = 0u; c < D4; c++) {
        let at = (qb + rowc) * D4 + c;
        qr[c] = q4[at] * qs;
        dr[c] = do4[at];
        dl = fma(dr[c], o_in[at], dl);
    }
    let delta = dl.x + dl.y + dl.z + dl.w;
    let lse2 = lse_in[qb + rowc] * LOG2E;
    var dq: array<vec4<f32>, MAXC>;
    for (var j0 = 0u; j0 < wend; j0 += BC) {
        stage_kv(lid, kb, j0, wend);
        workgroupBarrier();
        for (var i0 = 0u; i0 < BC && j0 + i0 < kend; i0 += TW) {
            var s: array<f32, TW>;
            var dp: array<f32, TW>;
            for (var c = 0u; c < D4; c++) {
                let qc = qr[c];
                let dc = dr[c];
                for (var i = 0u; i < TW; i++) {
                    s[i] += dot(qc, tile_a[(i0 + i) * D4 + c]);
                    dp[i] += dot(dc, tile_b[(i0 + i) * D4 + c]);
                }
            }
            var ds: array<f32, TW>;
            for (var i = 0u; i < TW; i++) {
                ds[i] = select(0.0, exp2(s[i] - lse2) * (dp[i] - delta), j0 + i0 + i < kend);
            }
            for (var c = 0u; c < D4; c++) {
                var a = dq[c];
                for (var i = 0u; i < TW; i++) { a = fma(vec4<f32>(ds[i]), tile_a[(i0 + i) * D4 + c], a); }
                dq[c] = a;
            }
        }
        workgroupBarrier();
    }
    if live {
        for (var c = 0u; c < D4; c++) { grad_a[(qb + row) * D4 + c] = dq[c] * p.scale; }
        delta_out[qb + row] = delta;
    }
}

// dK and dV: invocation lid owns key row k0 + lid of K/V head bh and walks the query blocks
// that see the workgroup's key rows, in each query head of its group (formulas as in
// attn_bwd_dkv).
@compute @workgroup_size(WG)
fn attn_bwd_dkv_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wg = flat_wg(wid, nwg);
    let bh = wg / p.blocks;
    if bh >= p.bh { return; } // uniform across the workgroup
    let k0 = (wg % p.blocks) * WG;
    let row = k0 + lid;
    let live = row < p.tk;
    let rowc = min(row, p.tk - 1u);
    let kb = bh * p.kstride;
    // Query i sees key j when j <= i + qoff: this row's first query, and the workgroup's.
    var i_start = 0u;
    var w_start = 0u;
    if p.causal != 0u {
        if rowc > p.qoff { i_start = rowc - p.qoff; }
        if k0 > p.qoff { w_start = k0 - p.qoff; }
    }

    let qs = p.scale * LOG2E;
    var kr: array<vec4<f32>, MAXC>;
    var vr: array<vec4<f32>, MAXC>;
    for (var c = 0u; c < D4; c++) {
        kr[c] = k4[(kb + rowc) * D4 + c] * qs;
        vr[c] = v4[(kb + rowc) * D4 + c];
    }
    var dk: array<vec4<f32>, MAXC>;
    var dv: array<vec4<f32>, MAXC>;
    // dK and dV sum over the query heads that share this K/V head (p.group is uniform: the
    // barriers stay in uniform control flow).
    for (var g = 0u; g < p.group; g++) {
        let qb = (bh * p.group + g) * p.t;
        for (var j0 = w_start; j0 < p.t; j0 += BC) {
            stage_qdo(lid, qb, j0, p.t);
            workgroupBarrier();
            for (var i0 = 0u; i0 < BC && j0 + i0 < p.t; i0 += TW) {
                // Skip steps wholly before this row's first query (the diagonal block).
                if j0 + i0 + TW <= i_start { continue; }
                var s: array<f32, TW>;
                var dp: array<f32, TW>;
                for (var c = 0u; c < D4; c++) {
                    let kc = kr[c];
                    let vc = vr[c];
                    for (var i = 0u; i < TW; i++) {
                        s[i] += dot(kc, tile_a[(i0 + i) * D4 + c]);
                        dp[i] += dot(vc, tile_b[(i0 + i) * D4 + c]);
                    }
                }
                var pr: array<f32, TW>;
                var ds: array<f32, TW>;
                for (var i = 0u; i < TW; i++) {
                    let qi = min(j0 + i0 + i, p.t - 1u);
                    let ok = j0 + i0 + i < p.t && j0 + i0 + i >= i_start;
                    pr[i] = select(0.0, exp2(s[i] - lse_in[qb + qi] * LOG2E), ok);
                    ds[i] = pr[i] * (dp[i] - delta_in[qb + qi]);
                }
                for (var c = 0u; c < D4; c++) {
                    var a = dk[c];
                    var b = dv[c];
                    for (var i = 0u; i < TW; i++) {
                        a = fma(vec4<f32>(ds[i]), tile_a[(i0 + i) * D4 + c], a);
                        b = fma(vec4<f32>(pr[i]), tile_b[(i0 + i) * D4 + c], b);
                    }
                    dk[c] = a;
                    dv[c] = b;
                }
            }
            workgroupBarrier();
        }
    }
    if live {
        for (var c = 0u; c < D4; c++) {
            grad_a[(kb + row) * D4 + c] = dk[c] * p.scale;
            grad_v[(kb + row) * D4 + c] = dv[c];
        }
    }
}
