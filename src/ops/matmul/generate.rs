//! Writes `shaders/matmul_subgroup.wgsl` (checked in; `tests/shaders.rs` fails when it is stale
//! and `PORTAGRAD_REGENERATE=1` rewrites it).
//!
//! WGSL has no macros and `subgroupBroadcast` needs a constant lane, and the one thing that makes
//! this kernel fast on lavapipe is that every accumulator and every broadcast is a distinct SSA
//! value after compilation (a loop over rows leaves the accumulators in memory: measured 10
//! instead of ~50 GFLOP/s at 1024^3). So the per-row code is generated here, straight-line, once
//! per subgroup size and operand layout.

use crate::ops::codegen::{Wgsl, header};
use crate::wgsl;

/// Rows of C per subgroup tile.
const TM: usize = 64;
/// vec4 column groups per lane: a tile is TM x (4 * CV * S) columns.
const CV: usize = 2;
/// Subgroup sizes with an entry point (lavapipe: 256-bit and 512-bit lanes).
const SIZES: [usize; 2] = [8, 16];
const XYZW: [char; 4] = ['x', 'y', 'z', 'w'];

/// The fixed part of the file after its header line: the module docs, bindings and helpers.
const PRELUDE: &str = r#"
//
// enable subgroups;
// (The directive is WGSL's, but naga 30 rejects it as unimplemented; subgroup builtins are
// gated by the device's SUBGROUP feature instead. The launcher compiles this file only when
// `Device::has_subgroups()` is true.)
//
// Subgroup-broadcast matmul for CPU-like adapters (lavapipe): no workgroup memory, no barriers.
// One workgroup is one subgroup of S lanes (S read from the adapter's fixed subgroup size and
// checked against the `subgroup_size` builtin). It computes a 64 x (8*S) tile of C: lane l owns
// the columns n0 + 4*(l + S*v) .. +4 for v in {0, 1}, i.e. 128 vec4 accumulators per lane.
// Per step of 4 along K each lane loads its 2 x 4 vec4s of B and a 1/S share of the 64 x 4
// block of A; every row of A then reaches all lanes through subgroupBroadcast, so each value
// of A and B is loaded once per tile. On lavapipe every storage access is a per-lane scalar
// loop, so loads are what this layout minimises; FMAs are nearly free.
// Tiles are numbered rows-first inside a column panel of B, so consecutive workgroups reuse
// the same K x 8S panel of B from cache.
//
// Entry points (S = 8, 16):
//   mm_sg{S}_v4  vec4 loads; needs K % 4 == 0, N % 4 == 0 unless TRANS_B, M % 4 == 0 if TRANS_A.
//   mm_sg{S}     scalar loads through element strides: any shape and layout.

override TRANS_A: bool = false; // A is stored (K, M): read Aᵀ in place (vec4 entries only)
override TRANS_B: bool = false; // B is stored (N, K): read Bᵀ in place (vec4 entries only)

struct Params {
    m: u32,        // rows of C
    n: u32,        // columns of C
    k: u32,        // K of the operands' layout (row length of A, or of Bᵀ)
    flags: u32,    // bit 0: add bias; bits 1-2: activation (0 none, 1 relu, 2 gelu)
    tiles_m: u32,  // tiles along M per matrix
    tiles: u32,    // tiles per matrix
    total: u32,    // tiles in the whole dispatch (batch * tiles)
    kc: u32,       // K of this dispatch: k0 .. k0 + kc (the host splits a very long K)
    sam: u32,      // element stride of A along m (scalar entries)
    sak: u32,      // element stride of A along k
    sbk: u32,      // element stride of B along k
    sbn: u32,      // element stride of B along n
    a0: u32,       // element offset of A's column k0 (k0 * sak)
    b0: u32,       // element offset of B's row k0 (k0 * sbk)
    _pad0: u32,
    _pad1: u32,
    bdims: vec4<u32>, // batch shape of C, leading 1s
    bsa: vec4<u32>,   // element offset of A per batch index (0 where broadcast)
    bsb: vec4<u32>,   // element offset of B per batch index (0 where broadcast)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a1: array<f32>;        // A: (batch.., M, K) or (batch.., K, M)
@group(0) @binding(2) var<storage, read> b1: array<f32>;        // B: (batch.., K, N) or (batch.., N, K)
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;  // A as vec4 (vec4 entries)
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;  // B as vec4 (vec4 entries)
@group(0) @binding(3) var<storage, read> bias: array<f32>;      // (N), read when flags & 1
@group(0) @binding(4) var<storage, read_write> c: array<f32>;   // C: (batch.., M, N)

// Element offsets of batch item `bi`'s A (x) and B (y).
fn batch_offsets(bi: u32) -> vec2<u32> {
    var rem = bi;
    var o = vec2<u32>(0u, 0u);
    for (var i = 0u; i < 4u; i++) {
        let d = 3u - i;
        let s = p.bdims[d];
        let j = rem % s;
        rem = rem / s;
        o += j * vec2<u32>(p.bsa[d], p.bsb[d]);
    }
    return o + vec2<u32>(p.a0, p.b0);
}

// Same formula as gelu_f in unary.wgsl (GPT-2's tanh approximation, overflow-safe tanh).
fn tanh_stable(v: f32) -> f32 {
    let e = exp(-2.0 * abs(v));
    return sign(v) * (1.0 - e) / (1.0 + e);
}

fn gelu_f(v: f32) -> f32 {
    let k = 0.7978845608028654; // sqrt(2 / pi)
    return 0.5 * v * (1.0 + tanh_stable(k * (v + 0.044715 * v * v * v)));
}

// Bias of 4 adjacent columns from `col` (zeros without a bias; never read past N).
fn bias4(col: u32) -> vec4<f32> {
    let on = (p.flags & 1u) != 0u;
    let last = select(0u, p.n - 1u, on);
    let v = vec4<f32>(bias[min(col, last)], bias[min(col + 1u, last)], bias[min(col + 2u, last)], bias[min(col + 3u, last)]);
    return select(vec4<f32>(0.0), v, on);
}

// Store 4 adjacent outputs of row `row` from column `col`, skipping those outside C.
fn store4(co: u32, row: u32, col: u32, v: vec4<f32>) {
    if row >= p.m {
        return;
    }
    let i = co + row * p.n + col;
    if col < p.n { c[i] = v.x; }
    if col + 1u < p.n { c[i + 1u] = v.y; }
    if col + 2u < p.n { c[i + 2u] = v.z; }
    if col + 3u < p.n { c[i + 3u] = v.w; }
}

// The activation over this lane's stored outputs of the tile: rows m0..m0+64, columns
// col + j * stride + 0..4 for j in {0, 1}.
fn activate(co: u32, m0: u32, col: u32, stride: u32) {
    let act = (p.flags >> 1u) & 3u;
    if act == 0u {
        return;
    }
    for (var r = m0; r < min(m0 + 64u, p.m); r++) {
        for (var j = 0u; j < 8u; j++) {
            let cc = col + (j / 4u) * stride + j % 4u;
            if cc < p.n {
                let i = co + r * p.n + cc;
                let x = c[i];
                c[i] = select(gelu_f(x), max(x, 0.0), act == 1u);
            }
        }
    }
}

// The fallbacks' stores: bias, activation, bounds, one output at a time.
fn put4(co: u32, row: u32, col: u32, v: vec4<f32>) {
    if row >= p.m {
        return;
    }
    let act = (p.flags >> 1u) & 3u;
    let x = v + bias4(col);
    let y = select(select(x, max(x, vec4<f32>(0.0)), act == 1u),
                   vec4<f32>(gelu_f(x.x), gelu_f(x.y), gelu_f(x.z), gelu_f(x.w)), act == 2u);
    store4(co, row, col, y);
}

// acc + a.x * b0 + a.y * b1 + a.z * b2 + a.w * b3: one row of C times 4 rows of B.
fn fr(acc: vec4<f32>, a: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(a.w), b3, fma(vec4<f32>(a.z), b2, fma(vec4<f32>(a.y), b1, fma(vec4<f32>(a.x), b0, acc))));
}

fn ea4(i: u32) -> f32 {
    return a4[i / 4u][i % 4u];
}

fn eb4(i: u32) -> f32 {
    return b4[i / 4u][i % 4u];
}
"#;

/// The full text of `shaders/matmul_subgroup.wgsl`.
pub fn subgroup_source() -> String {
    let mut o = Wgsl::new();
    o.line(&format!(
        "{}{PRELUDE}",
        header("ops::matmul::generate::subgroup_source")
    ));
    o.blank();
    for (name, buf) in [("ea1", "a1"), ("eb1", "b1")] {
        o.line(&format!("fn {name}(i: u32) -> f32 {{"));
        o.line(&format!("    return {buf}[i];"));
        o.line("}");
        if name == "ea1" {
            o.blank();
        }
    }
    fallback_fn(&mut o, "fallback_v4", "ea4", "eb4");
    fallback_fn(&mut o, "fallback", "ea1", "eb1");
    for s in SIZES {
        entry_v4(&mut o, s);
    }
    for s in SIZES {
        entry_scalar(&mut o, s);
    }
    o.finish()
}

/// Correct for any subgroup size, used only if the adapter runs a subgroup size other than the
/// one the entry point was chosen for (the workgroup is then not one subgroup). Each invocation
/// computes its own 64 x (2 x 4) block, 8 rows at a time and straight-line, because lavapipe
/// ends any invocation after 65,535 loop iterations in total: this way that is 8 * K / 4
/// iterations, so K up to ~32k (the broadcast path needs only K / 4).
fn fallback_fn(o: &mut Wgsl, name: &str, fa: &str, fb: &str) {
    o.blank();
    o.line("// Any subgroup size: each invocation computes its own 64 x (2 x 4) block without sharing,");
    o.line(
        "// 8 rows per pass (lavapipe stops an invocation after 65,535 loop iterations in all, so",
    );
    o.line("// the loops here are coarse: 8 * K / 4 iterations).");
    wgsl!(
        o,
        "fn {name}(off: vec2<u32>, co: u32, m0: u32, col0: u32, col1: u32) {{"
    );
    o.line("    let kmax = vec4<u32>(max(p.kc, 1u) - 1u);");
    o.line("    let zero = vec4<f32>(0.0);");
    for v in 0..CV {
        for cc in 0..4 {
            wgsl!(
                o,
                "    let bc{v}_{cc} = off.y + min(col{v} + {cc}u, p.n - 1u) * p.sbn;"
            );
        }
    }
    o.line("    for (var g = 0u; g < 64u; g += 8u) {");
    for i in 0..8 {
        wgsl!(
            o,
            "        let ar{i} = off.x + min(m0 + g + {i}u, p.m - 1u) * p.sam;"
        );
    }
    o.line("        var acc: array<vec4<f32>, 16>;");
    o.line("        for (var k = 0u; k < p.kc; k += 4u) {");
    o.line("            let kv = vec4<u32>(k) + vec4<u32>(0u, 1u, 2u, 3u);");
    o.line("            let live = kv < vec4<u32>(p.kc);");
    o.line("            let ks = min(kv, kmax);");
    o.line("            let ka = ks * p.sak;");
    o.line("            let kb = ks * p.sbk;");
    for v in 0..CV {
        for (kk, comp) in XYZW.iter().enumerate() {
            let parts = (0..4)
                .map(|cc| format!("{fb}(bc{v}_{cc} + kb.{comp})"))
                .collect::<Vec<_>>()
                .join(", ");
            wgsl!(
                o,
                "            let b{v}_{kk} = select(zero, vec4<f32>({parts}), live.{comp});"
            );
        }
    }
    for i in 0..8 {
        let parts = XYZW
            .iter()
            .map(|c| format!("{fa}(ar{i} + ka.{c})"))
            .collect::<Vec<_>>()
            .join(", ");
        wgsl!(
            o,
            "            let a{i} = select(zero, vec4<f32>({parts}), live);"
        );
        for v in 0..CV {
            let j = 2 * i + v;
            wgsl!(
                o,
                "            acc[{j}] = fr(acc[{j}], a{i}, b{v}_0, b{v}_1, b{v}_2, b{v}_3);"
            );
        }
    }
    o.line("        }");
    for i in 0..8 {
        for v in 0..CV {
            wgsl!(
                o,
                "        put4(co, m0 + g + {i}u, col{v}, acc[{}]);",
                2 * i + v
            );
        }
    }
    o.line("    }");
    o.line("}");
}

fn prologue(o: &mut Wgsl, s: usize, name: &str) {
    o.blank();
    wgsl!(o, "@compute @workgroup_size({s})");
    wgsl!(
        o,
        "fn {name}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,"
    );
    o.line("        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32,");
    o.line("        @builtin(local_invocation_index) li: u32) {");
    o.line("    let t = wid.y * nwg.x + wid.x;");
    o.line("    if t >= p.total {");
    o.line("        return;");
    o.line("    }");
    o.line("    let bi = t / p.tiles;");
    o.line("    let tile = t % p.tiles;");
    wgsl!(o, "    let m0 = (tile % p.tiles_m) * {TM}u;");
    wgsl!(o, "    let n0 = (tile / p.tiles_m) * {}u;", 4 * CV * s);
    o.line("    let off = batch_offsets(bi);");
    o.line("    let co = bi * p.m * p.n;");
}

/// 64 rows: acc[2r + v] += A[r, k..k+4] (broadcast) x the lane's B block v.
fn rows_update(o: &mut Wgsl, bcast: impl Fn(usize) -> String) {
    for r in 0..TM {
        wgsl!(o, "            let r{r} = {};", bcast(r));
        for v in 0..CV {
            let i = r * CV + v;
            wgsl!(
                o,
                "            acc[{i}] = fr(acc[{i}], r{r}, b{v}_0, b{v}_1, b{v}_2, b{v}_3);"
            );
        }
    }
}

/// Straight-line and small: one bias add (the lane's bias vec4s are loaded once) and one
/// bounds-checked store per accumulator. The activation, when there is one, runs in a loop over
/// the lane's own outputs afterwards: inlining it per accumulator made the kernel compile 5x
/// slower and run slower (a bigger function for LLVM to allocate registers in).
fn epilogue(o: &mut Wgsl, s: usize) {
    for v in 0..CV {
        wgsl!(o, "    let bias{v} = bias4(n0 + 4u * (lane + {}u));", s * v);
    }
    for r in 0..TM {
        for v in 0..CV {
            wgsl!(
                o,
                "    store4(co, m0 + {r}u, n0 + 4u * (lane + {}u), acc[{}] + bias{v});",
                s * v,
                r * CV + v
            );
        }
    }
    wgsl!(o, "    activate(co, m0, n0 + 4u * lane, {}u);", 4 * s);
    o.line("}");
}

fn entry_v4(o: &mut Wgsl, s: usize) {
    let h_groups = TM / (4 * s); // vec4 row groups per lane when A is transposed
    let rpl = TM / s; // rows per lane when A is not transposed
    prologue(o, s, &format!("mm_sg{s}_v4"));
    wgsl!(o, "    if sgs != {s}u {{");
    wgsl!(
        o,
        "        fallback_v4(off, co, m0, n0 + 4u * li, n0 + 4u * (li + {s}u));"
    );
    o.line("        return;");
    o.line("    }");
    wgsl!(o, "    var acc: array<vec4<f32>, {}>;", TM * CV);
    o.line("    let k4 = p.kc / 4u;");
    o.line("    let n4 = p.n / 4u;");
    o.line("    let m4 = p.m / 4u;");
    o.line("    // B: the lane's column groups, clamped into C (results past N are never stored).");
    for v in 0..CV {
        wgsl!(
            o,
            "    let bq{v} = off.y / 4u + min(n0 / 4u + lane + {}u, n4 - 1u);",
            s * v
        );
        for cc in 0..4 {
            wgsl!(
                o,
                "    let bt{v}_{cc} = (off.y + min(n0 + 4u * (lane + {}u) + {cc}u, p.n - 1u) * p.k) / 4u;",
                s * v
            );
        }
    }
    o.line("    if TRANS_A {");
    wgsl!(
        o,
        "        // A is (K, M): lane l holds rows 4l..4l+4 (+{}h) at each of 4 k, as vec4 along m.",
        4 * s
    );
    for h in 0..h_groups {
        wgsl!(
            o,
            "        let aq{h} = (off.x + min(m0 + {}u + 4u * lane, p.m - 4u)) / 4u;",
            4 * s * h
        );
    }
    o.line("        for (var k = 0u; k < k4; k++) {");
    load_b_v4(o);
    for h in 0..h_groups {
        for kk in 0..4 {
            wgsl!(
                o,
                "            let t{h}_{kk} = a4[aq{h} + (4u * k + {kk}u) * m4];"
            );
        }
    }
    // row r = 4S*h + 4l + c
    for h in 0..h_groups {
        for l in 0..s {
            for (cc, comp) in XYZW.iter().enumerate() {
                let r = 4 * s * h + 4 * l + cc;
                let parts = (0..4)
                    .map(|kk| format!("subgroupBroadcast(t{h}_{kk}.{comp}, {l}u)"))
                    .collect::<Vec<_>>()
                    .join(", ");
                wgsl!(o, "            let r{r} = vec4<f32>({parts});");
                for v in 0..CV {
                    let i = r * CV + v;
                    wgsl!(
                        o,
                        "            acc[{i}] = fr(acc[{i}], r{r}, b{v}_0, b{v}_1, b{v}_2, b{v}_3);"
                    );
                }
            }
        }
    }
    o.line("        }");
    o.line("    } else {");
    wgsl!(
        o,
        "        // A is (M, K): lane l holds rows l + {s}j at 4 consecutive k, as vec4 along k."
    );
    for j in 0..rpl {
        wgsl!(
            o,
            "        let aq{j} = (off.x + min(m0 + lane + {}u, p.m - 1u) * p.k) / 4u;",
            s * j
        );
    }
    o.line("        for (var k = 0u; k < k4; k++) {");
    load_b_v4(o);
    for j in 0..rpl {
        wgsl!(o, "            let av{j} = a4[aq{j} + k];");
    }
    rows_update(o, |r| format!("subgroupBroadcast(av{}, {}u)", r / s, r % s));
    o.line("        }");
    o.line("    }");
    epilogue(o, s);
}

fn load_b_v4(o: &mut Wgsl) {
    for v in 0..CV {
        let decls = (0..4)
            .map(|kk| format!("var b{v}_{kk}: vec4<f32>;"))
            .collect::<Vec<_>>()
            .join(" ");
        wgsl!(o, "            {decls}");
    }
    o.line("            if TRANS_B {");
    o.line("                // B is (N, K): 4 columns as vec4 along k, transposed in registers.");
    for v in 0..CV {
        for cc in 0..4 {
            wgsl!(o, "                let u{v}_{cc} = b4[bt{v}_{cc} + k];");
        }
    }
    for v in 0..CV {
        for (kk, comp) in XYZW.iter().enumerate() {
            wgsl!(
                o,
                "                b{v}_{kk} = vec4<f32>(u{v}_0.{comp}, u{v}_1.{comp}, u{v}_2.{comp}, u{v}_3.{comp});"
            );
        }
    }
    o.line("            } else {");
    for v in 0..CV {
        for kk in 0..4 {
            wgsl!(
                o,
                "                b{v}_{kk} = b4[bq{v} + (4u * k + {kk}u) * n4];"
            );
        }
    }
    o.line("            }");
}

fn entry_scalar(o: &mut Wgsl, s: usize) {
    let rpl = TM / s;
    prologue(o, s, &format!("mm_sg{s}"));
    wgsl!(o, "    if sgs != {s}u {{");
    wgsl!(
        o,
        "        fallback(off, co, m0, n0 + 4u * li, n0 + 4u * (li + {s}u));"
    );
    o.line("        return;");
    o.line("    }");
    wgsl!(o, "    var acc: array<vec4<f32>, {}>;", TM * CV);
    wgsl!(
        o,
        "    // A: lane l holds rows l + {s}j; B: the lane's 2 x 4 columns. Indices are clamped into"
    );
    o.line(
        "    // the matrices; values past K are zeroed, rows and columns past C are never stored.",
    );
    for j in 0..rpl {
        wgsl!(
            o,
            "    let ar{j} = off.x + min(m0 + lane + {}u, p.m - 1u) * p.sam;",
            s * j
        );
    }
    for v in 0..CV {
        for cc in 0..4 {
            wgsl!(
                o,
                "    let bc{v}_{cc} = off.y + min(n0 + 4u * (lane + {}u) + {cc}u, p.n - 1u) * p.sbn;",
                s * v
            );
        }
    }
    o.line("    let kmax = vec4<u32>(max(p.kc, 1u) - 1u);");
    o.line("    for (var k = 0u; k < p.kc; k += 4u) {");
    o.line("        let kv = vec4<u32>(k) + vec4<u32>(0u, 1u, 2u, 3u);");
    o.line("        let live = kv < vec4<u32>(p.kc);");
    o.line("        let ks = min(kv, kmax);");
    o.line("        let ka = ks * p.sak;");
    o.line("        let kb = ks * p.sbk;");
    o.line("        let zero = vec4<f32>(0.0);");
    for v in 0..CV {
        for (kk, comp) in XYZW.iter().enumerate() {
            wgsl!(
                o,
                "        let b{v}_{kk} = select(zero, vec4<f32>(b1[bc{v}_0 + kb.{comp}], b1[bc{v}_1 + kb.{comp}], b1[bc{v}_2 + kb.{comp}], b1[bc{v}_3 + kb.{comp}]), live.{comp});"
            );
        }
    }
    for j in 0..rpl {
        wgsl!(
            o,
            "        let av{j} = select(zero, vec4<f32>(a1[ar{j} + ka.x], a1[ar{j} + ka.y], a1[ar{j} + ka.z], a1[ar{j} + ka.w]), live);"
        );
    }
    for r in 0..TM {
        wgsl!(
            o,
            "        let r{r} = subgroupBroadcast(av{}, {}u);",
            r / s,
            r % s
        );
        for v in 0..CV {
            let i = r * CV + v;
            wgsl!(
                o,
                "        acc[{i}] = fr(acc[{i}], r{r}, b{v}_0, b{v}_1, b{v}_2, b{v}_3);"
            );
        }
    }
    o.line("    }");
    epilogue(o, s);
}
