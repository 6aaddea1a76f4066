//! The attention modules generated per head size, through [`crate::ops::codegen`]: the
//! portable and tiled modules with the head size built in (GPUs), and the straight-line
//! subgroup kernels for CPU adapters.

use crate::ops::codegen::{self, Wgsl, each};
use crate::runtime::Shader;
use crate::wgsl;

use super::launch::{SHADER, TILED_SHADER};

// Straight-line kernels for CPU adapters with subgroups (lavapipe), generated per head size.
//
// Row kernels: the lanes of a subgroup own consecutive rows; per tile of TW = 8 rows of the
// other side, lane i loads tile row i and every lane reads the tile out of lanes 0..8 with
// `subgroupBroadcast`. On lavapipe a storage load is a bounds-checked loop over lanes and a
// broadcast a register extract, so each K/V element is loaded once per subgroup, not once per
// lane. A private array indexed by a loop counter stays in memory there (every access a
// per-lane gather); written out with constant indices, every row, accumulator and broadcast is
// an SSA value. Each lane also owns R rows, so one broadcast feeds R dot products. Measured
// (B=4, H=12, T=1024, D=64, causal; CPU-seconds forward / forward+backward): looped code with
// tiles in storage 2.35 / 12.7 (the portable kernels); looped with broadcasts 1.06 / 4.1;
// straight-line R=1 0.48 / 3.3, R=2 0.34, R=4 0.24 / 1.05 (backward kernels with R=2: 1.27,
// R=1: 1.59). Register demand grows with R·D and with it LLVM's compile time (first use per
// machine; Mesa caches the result on disk): for D=64 and R=4 about 2 s for the forward and
// 10 s for the backward kernels, so larger heads take fewer rows per lane (`rows`).
//
// Decode: one subgroup per (b, h, query row); lane l takes cached keys l, l + sg, ... with its
// own online-softmax state; the states merge with subgroupMax / subgroupAdd.
//
// WGSL has no macros and `subgroupBroadcast` needs a constant lane, hence generated code.
// Entry points `attn_fwd_cpu`, `attn_bwd_dq_cpu`, `attn_bwd_dkv_cpu` (R rows per lane: a
// subgroup's rows start at r0 = (block * WG + sid * sg) * R, lane l owns rows r0 + l + k * sg
// for k < R) and `attn_decode_cpu`. Names in the generated code: x* a lane's own loads, b*
// broadcasts, q/k/v/d rows, a/g/e/f accumulators; suffixes _r row, _c vec4 column chunk,
// _i tile row.
/// Rows per exchanged tile (lanes broadcast from).
const TW: usize = 8;

/// Rows per lane of the forward, dQ and dK/dV kernels for head size `d`: fewer for larger
/// heads, whose kernels hold more registers and compile slower.
pub(crate) fn cpu_rows(d: usize) -> [u32; 3] {
    match d {
        0..=64 => [4, 4, 4],
        65..=96 => [4, 2, 2],
        _ => [2, 1, 1],
    }
}

fn entry(o: &mut Wgsl, name: &str, r: usize) {
    wgsl!(o, "@compute @workgroup_size(WG)");
    wgsl!(
        o,
        "fn {name}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_id) sid: u32, @builtin(subgroup_size) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {{"
    );
    wgsl!(o, "    let wg = wid.y * nwg.x + wid.x;");
    wgsl!(o, "    let bh = wg / p.blocks;");
    wgsl!(o, "    let r0 = ((wg % p.blocks) * WG + sid * sg) * {r}u;");
}

/// `row{r}` (this lane's rows) and `at{r}` (their first vec4, clamped to `nrows` rows).
fn rows_prologue(o: &mut Wgsl, r: usize, d4: usize, nrows: &str) {
    for r in 0..r {
        wgsl!(o, "    let row{r} = r0 + lane + {r}u * sg;");
        wgsl!(
            o,
            "    let at{r} = (base + min(row{r}, {nrows} - 1u)) * {d4}u;"
        );
    }
}

fn fwd(o: &mut Wgsl, d4: usize, rr: usize) {
    entry(o, "attn_fwd_cpu", rr);
    wgsl!(
        o,
        "    if bh >= p.bh || r0 >= p.t {{ return; }} // uniform across the subgroup"
    );
    wgsl!(o, "    let base = bh * p.t;");
    wgsl!(
        o,
        "    let kb = (bh / p.group) * p.kstride; // the K/V head of query head bh"
    );
    wgsl!(o, "    var kend = p.tk;");
    wgsl!(
        o,
        "    if p.causal != 0u {{ kend = min(p.tk, r0 + sg * {rr}u + p.qoff); }}"
    );
    wgsl!(o, "    let qs = p.scale * LOG2E;");
    rows_prologue(o, rr, d4, "p.t");
    for r in 0..rr {
        for c in 0..d4 {
            wgsl!(o, "    let q{r}_{c} = q4[at{r} + {c}u] * qs;");
            wgsl!(o, "    var a{r}_{c} = vec4<f32>(0.0);");
        }
        wgsl!(o, "    var m{r} = NEG;");
        wgsl!(o, "    var l{r} = 0.0;");
    }
    wgsl!(o, "    for (var j0 = 0u; j0 < kend; j0 += 8u) {{");
    wgsl!(
        o,
        "        let ka = (kb + min(j0 + lane % 8u, kend - 1u)) * {d4}u;"
    );
    for r in 0..rr {
        wgsl!(
            o,
            "        {}",
            each(TW, |i| format!("var s{r}_{i} = 0.0;"))
        );
    }
    for c in 0..d4 {
        wgsl!(o, "        let xk{c} = k4[ka + {c}u];");
        for i in 0..TW {
            wgsl!(o, "        let bk{c}_{i} = subgroupBroadcast(xk{c}, {i}u);");
            wgsl!(
                o,
                "        {}",
                each(rr, |r| format!("s{r}_{i} += dot(q{r}_{c}, bk{c}_{i});"))
            );
        }
    }
    for r in 0..rr {
        wgsl!(o, "        var mt{r} = m{r};");
        for i in 0..TW {
            wgsl!(
                o,
                "        let ok{r}_{i} = j0 + {i}u < kend && (p.causal == 0u || j0 + {i}u <= row{r} + p.qoff);"
            );
            wgsl!(
                o,
                "        if ok{r}_{i} {{ mt{r} = max(mt{r}, s{r}_{i}); }}"
            );
        }
        wgsl!(o, "        let corr{r} = exp2(m{r} - mt{r});");
        for i in 0..TW {
            wgsl!(
                o,
                "        let p{r}_{i} = select(0.0, exp2(s{r}_{i} - mt{r}), ok{r}_{i});"
            );
        }
        let sum = (0..TW)
            .map(|i| format!("p{r}_{i}"))
            .collect::<Vec<_>>()
            .join(" + ");
        wgsl!(o, "        l{r} = l{r} * corr{r} + {sum};");
        wgsl!(o, "        m{r} = mt{r};");
    }
    for c in 0..d4 {
        wgsl!(o, "        let xv{c} = v4[ka + {c}u];");
        wgsl!(
            o,
            "        {}",
            each(rr, |r| format!("a{r}_{c} *= corr{r};"))
        );
        for i in 0..TW {
            wgsl!(o, "        let bv{c}_{i} = subgroupBroadcast(xv{c}, {i}u);");
            wgsl!(
                o,
                "        {}",
                each(rr, |r| format!("a{r}_{c} += p{r}_{i} * bv{c}_{i};"))
            );
        }
    }
    wgsl!(o, "    }}");
    for r in 0..rr {
        wgsl!(o, "    if row{r} < p.t {{");
        wgsl!(o, "        let inv = 1.0 / l{r};");
        wgsl!(o, "        let oa = (base + row{r}) * {d4}u;");
        for c in 0..d4 {
            wgsl!(o, "        o_out[oa + {c}u] = a{r}_{c} * inv;");
        }
        wgsl!(
            o,
            "        lse_out[base + row{r}] = (m{r} + log2(l{r})) * LN2;"
        );
        wgsl!(o, "    }}");
    }
    wgsl!(o, "}}\n");
}

/// The two score tiles of a backward kernel: each lane loads its tile row of two tensors
/// (`tiles`: name and buffer, at address `addr`), every lane reads the TW rows through
/// broadcasts, and accumulates `s{r}_{i} = own[0] · tile0` and `dp{r}_{i} = own[1] · tile1`
/// for its rows (dQ: S = Q·K, dP = dO·V; dK/dV: S = K·Q, dP = V·dO).
fn score_tiles(
    o: &mut Wgsl,
    d4: usize,
    rr: usize,
    addr: &str,
    tiles: [(&str, &str); 2],
    own: [&str; 2],
) {
    let ([(ta, ba), (tb, bb)], [oa, ob]) = (tiles, own);
    for r in 0..rr {
        wgsl!(
            o,
            "        {}",
            each(TW, |i| format!("var s{r}_{i} = 0.0; var dp{r}_{i} = 0.0;"))
        );
    }
    for c in 0..d4 {
        wgsl!(o, "        let x{ta}{c} = {ba}[{addr} + {c}u];");
        wgsl!(o, "        let x{tb}{c} = {bb}[{addr} + {c}u];");
        for i in 0..TW {
            wgsl!(
                o,
                "        let b{ta}{c}_{i} = subgroupBroadcast(x{ta}{c}, {i}u);"
            );
            wgsl!(
                o,
                "        let b{tb}{c}_{i} = subgroupBroadcast(x{tb}{c}, {i}u);"
            );
            wgsl!(
                o,
                "        {}",
                each(rr, |r| format!(
                    "s{r}_{i} += dot({oa}{r}_{c}, b{ta}{c}_{i}); dp{r}_{i} += dot({ob}{r}_{c}, b{tb}{c}_{i});"
                ))
            );
        }
    }
}

fn dq(o: &mut Wgsl, d4: usize, rr: usize) {
    entry(o, "attn_bwd_dq_cpu", rr);
    wgsl!(o, "    if bh >= p.bh || r0 >= p.t {{ return; }}");
    wgsl!(o, "    let base = bh * p.t;");
    wgsl!(
        o,
        "    let kb = (bh / p.group) * p.kstride; // the K/V head of query head bh"
    );
    wgsl!(o, "    var kend = p.tk;");
    wgsl!(
        o,
        "    if p.causal != 0u {{ kend = min(p.tk, r0 + sg * {rr}u + p.qoff); }}"
    );
    wgsl!(o, "    let qs = p.scale * LOG2E;");
    rows_prologue(o, rr, d4, "p.t");
    for r in 0..rr {
        wgsl!(o, "    var dl{r} = vec4<f32>(0.0);");
        for c in 0..d4 {
            wgsl!(o, "    let q{r}_{c} = q4[at{r} + {c}u] * qs;");
            wgsl!(o, "    let d{r}_{c} = do4[at{r} + {c}u];");
            wgsl!(o, "    dl{r} = fma(d{r}_{c}, o_in[at{r} + {c}u], dl{r});");
            wgsl!(o, "    var g{r}_{c} = vec4<f32>(0.0);");
        }
        wgsl!(
            o,
            "    let delta{r} = dl{r}.x + dl{r}.y + dl{r}.z + dl{r}.w;"
        );
        wgsl!(o, "    let lse{r} = lse_in[at{r} / {d4}u] * LOG2E;");
    }
    wgsl!(o, "    for (var j0 = 0u; j0 < kend; j0 += 8u) {{");
    wgsl!(
        o,
        "        let ka = (kb + min(j0 + lane % 8u, kend - 1u)) * {d4}u;"
    );
    score_tiles(o, d4, rr, "ka", [("k", "k4"), ("v", "v4")], ["q", "d"]);
    for r in 0..rr {
        for i in 0..TW {
            wgsl!(
                o,
                "        let ds{r}_{i} = select(0.0, exp2(s{r}_{i} - lse{r}) * (dp{r}_{i} - delta{r}), j0 + {i}u < kend && (p.causal == 0u || j0 + {i}u <= row{r} + p.qoff));"
            );
        }
    }
    // The K tile's broadcasts are reused (LLVM keeps or reloads them; no storage access).
    for c in 0..d4 {
        for i in 0..TW {
            wgsl!(
                o,
                "        {}",
                each(rr, |r| format!("g{r}_{c} += ds{r}_{i} * bk{c}_{i};"))
            );
        }
    }
    wgsl!(o, "    }}");
    for r in 0..rr {
        wgsl!(o, "    if row{r} < p.t {{");
        wgsl!(o, "        let oa = (base + row{r}) * {d4}u;");
        for c in 0..d4 {
            wgsl!(o, "        grad_a[oa + {c}u] = g{r}_{c} * p.scale;");
        }
        wgsl!(o, "        delta_out[base + row{r}] = delta{r};");
        wgsl!(o, "    }}");
    }
    wgsl!(o, "}}\n");
}

fn dkv(o: &mut Wgsl, d4: usize, rr: usize) {
    entry(o, "attn_bwd_dkv_cpu", rr);
    wgsl!(o, "    if bh >= p.bh || r0 >= p.tk {{ return; }}");
    wgsl!(o, "    let base = bh * p.kstride; // bh: a K/V head here");
    wgsl!(o, "    var i_start = 0u;");
    wgsl!(
        o,
        "    if p.causal != 0u && r0 > p.qoff {{ i_start = r0 - p.qoff; }}"
    );
    wgsl!(o, "    let qs = p.scale * LOG2E;");
    rows_prologue(o, rr, d4, "p.tk");
    for r in 0..rr {
        for c in 0..d4 {
            wgsl!(o, "    let k{r}_{c} = k4[at{r} + {c}u] * qs;");
            wgsl!(o, "    let v{r}_{c} = v4[at{r} + {c}u];");
            wgsl!(o, "    var e{r}_{c} = vec4<f32>(0.0);");
            wgsl!(o, "    var f{r}_{c} = vec4<f32>(0.0);");
        }
    }
    // dK and dV sum over the query heads sharing this K/V head (grouped-query attention).
    wgsl!(o, "    for (var g = 0u; g < p.group; g++) {{");
    wgsl!(o, "    let qb = (bh * p.group + g) * p.t;");
    wgsl!(o, "    for (var i0 = i_start; i0 < p.t; i0 += 8u) {{");
    wgsl!(o, "        let qi = qb + min(i0 + lane % 8u, p.t - 1u);");
    wgsl!(o, "        let qa = qi * {d4}u;");
    wgsl!(o, "        let xl = lse_in[qi] * LOG2E;");
    wgsl!(o, "        let xd = delta_in[qi];");
    score_tiles(o, d4, rr, "qa", [("q", "q4"), ("o", "do4")], ["k", "v"]);
    for i in 0..TW {
        wgsl!(o, "        let bl{i} = subgroupBroadcast(xl, {i}u);");
        wgsl!(o, "        let bd{i} = subgroupBroadcast(xd, {i}u);");
    }
    for r in 0..rr {
        for i in 0..TW {
            wgsl!(
                o,
                "        let pr{r}_{i} = select(0.0, exp2(s{r}_{i} - bl{i}), i0 + {i}u < p.t && (p.causal == 0u || row{r} <= i0 + {i}u + p.qoff));"
            );
            wgsl!(
                o,
                "        let ds{r}_{i} = pr{r}_{i} * (dp{r}_{i} - bd{i});"
            );
        }
    }
    for c in 0..d4 {
        for i in 0..TW {
            wgsl!(
                o,
                "        {}",
                each(rr, |r| format!(
                    "e{r}_{c} += ds{r}_{i} * bq{c}_{i}; f{r}_{c} += pr{r}_{i} * bo{c}_{i};"
                ))
            );
        }
    }
    wgsl!(o, "    }}");
    wgsl!(o, "    }}");
    for r in 0..rr {
        wgsl!(o, "    if row{r} < p.tk {{");
        wgsl!(o, "        let oa = (base + row{r}) * {d4}u;");
        for c in 0..d4 {
            wgsl!(o, "        grad_a[oa + {c}u] = e{r}_{c} * p.scale;");
            wgsl!(o, "        grad_v[oa + {c}u] = f{r}_{c};");
        }
        wgsl!(o, "    }}");
    }
    wgsl!(o, "}}\n");
}

/// Decode: one subgroup per (b, h, query row); lane l takes cached keys l, l + sg, ...
/// with its own online-softmax state, merged at the end with subgroupMax / subgroupAdd.
fn decode(o: &mut Wgsl, d4: usize) {
    wgsl!(o, "@compute @workgroup_size(WG)");
    wgsl!(
        o,
        "fn attn_decode_cpu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_size) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {{"
    );
    wgsl!(o, "    let flat = wid.y * nwg.x + wid.x;");
    wgsl!(
        o,
        "    if flat >= p.bh * p.t {{ return; }} // uniform across the workgroup"
    );
    wgsl!(o, "    let kend = min(p.tk, p.qoff + flat % p.t + 1u);");
    wgsl!(o, "    let kb = ((flat / p.t) / p.group) * p.kstride;");
    wgsl!(o, "    let qs = p.scale * LOG2E;");
    for c in 0..d4 {
        wgsl!(o, "    let qd{c} = q4[flat * {d4}u + {c}u] * qs;");
        wgsl!(o, "    var a{c} = vec4<f32>(0.0);");
    }
    wgsl!(o, "    var m = NEG;");
    wgsl!(o, "    var l = 0.0;");
    wgsl!(o, "    for (var j = lane; j < kend; j += sg) {{");
    wgsl!(o, "        let ka = (kb + j) * {d4}u;");
    wgsl!(o, "        var s4 = vec4<f32>(0.0);");
    for c in 0..d4 {
        wgsl!(o, "        s4 = fma(qd{c}, k4[ka + {c}u], s4);");
    }
    wgsl!(o, "        let s = s4.x + s4.y + s4.z + s4.w;");
    wgsl!(o, "        let mn = max(m, s);");
    wgsl!(o, "        let corr = exp2(m - mn);");
    wgsl!(o, "        let pj = exp2(s - mn);");
    wgsl!(o, "        l = l * corr + pj;");
    wgsl!(o, "        m = mn;");
    for c in 0..d4 {
        wgsl!(
            o,
            "        a{c} = fma(vec4<f32>(pj), v4[ka + {c}u], a{c} * corr);"
        );
    }
    wgsl!(o, "    }}");
    wgsl!(
        o,
        "    let f = exp2(m - subgroupMax(m)); // 0 for a lane that saw no key"
    );
    wgsl!(o, "    let inv = 1.0 / subgroupAdd(l * f);");
    for c in 0..d4 {
        wgsl!(o, "    let od{c} = subgroupAdd(a{c} * f) * inv;");
    }
    wgsl!(o, "    if lane == 0u {{");
    for c in 0..d4 {
        wgsl!(o, "        o_out[flat * {d4}u + {c}u] = od{c};");
    }
    wgsl!(o, "    }}");
    wgsl!(o, "}}\n");
}

/// The entry points for head size `d` (a multiple of 4), to append to `attention.wgsl`.
fn entries(d: usize) -> String {
    let [rf, rq, rk] = cpu_rows(d).map(|r| r as usize);
    let mut o = Wgsl::new();
    wgsl!(
        o,
        "// ---- generated: straight-line CPU kernels, D = {d} ----\n"
    );
    fwd(&mut o, d / 4, rf);
    dq(&mut o, d / 4, rq);
    dkv(&mut o, d / 4, rk);
    decode(&mut o, d / 4);
    o.finish()
}

/// The portable module (plus the tiled kernels when `tiled`) with the head size built in:
/// `D4` a `const` instead of an override, and the private row arrays sized to it, so every loop
/// over a row has a constant trip count and the driver can keep rows in registers. (On an H100,
/// loops bounded by an override that index private arrays were left rolled, the arrays in local
/// memory: the matmul's 8x4 register blocks ran 5x slower that way.) Built once per process.
pub(crate) fn fixed_d_shader(d: usize, tiled: bool) -> &'static Shader {
    let family = if tiled {
        "attention_tiled_d"
    } else {
        "attention_portable_d"
    };
    crate::ops::generated_shader(family, d, || fixed_d_source(d, tiled))
}

/// Full WGSL of [`fixed_d_shader`] (also for the shader validation test).
pub(crate) fn fixed_d_source(d: usize, tiled: bool) -> String {
    let base = if tiled {
        TILED_SHADER.source
    } else {
        SHADER.source
    };
    let d4 = d / 4;
    let out = codegen::replace_once(
        base,
        "override D4: u32 = 16u;",
        &format!("const D4: u32 = {d4}u;"),
    );
    codegen::replace_once(
        &out,
        "const MAXC: u32 = 32u;",
        &format!("const MAXC: u32 = {d4}u;"),
    )
}

/// The portable module plus the CPU kernels for head size `d`, built once per process.
pub(crate) fn cpu_shader(d: usize) -> &'static Shader {
    crate::ops::generated_shader("attention_cpu_d", d, || cpu_source(d))
}

/// Full WGSL of the CPU-adapter module for head size `d` (for the shader validation test).
pub(crate) fn cpu_source(d: usize) -> String {
    format!("{}\n{}", SHADER.source, entries(d))
}
