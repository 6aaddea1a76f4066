//! The tensor-core matmul: f16 × f16 products accumulated in f32 through wgpu's experimental
//! cooperative matrices (`enable wgpu_cooperative_matrix;`: Vulkan `VK_KHR_cooperative_matrix`,
//! Metal simdgroup matrices).
//!
//! One module per (matrix size S, tile, transposes), generated here. A workgroup computes a
//! BM x BN tile of C = op(A) · op(B) (+ bias, activation; batched; split-K slices as the other
//! kernels) with four subgroups in a 2 x 2 grid, each owning (BM / 2) x (BN / 2) of C as
//! S x S f32 accumulators. Per BK-deep step of K, every invocation helps stage A's and B's
//! tiles into workgroup memory, converted from the packed-u32 f16 storage (two halves per
//! word, whole words when the tile's start and row stride are even, else element by element),
//! zero outside the operands, so any M, N, K is exact. The staged layout follows the operand's
//! layout in memory (rows along its contiguous dimension), and `coopLoad` (column-major) or
//! `coopLoadT` (row-major) reads the fragments, so a transposed operand costs nothing. The
//! epilogue stores each accumulator to a per-subgroup scratch tile and the subgroup's lanes
//! write it out through the same bias/activation code as the portable kernels.
//!
//! Subgroups: the workgroup has `WG` = 4 × the adapter's largest subgroup size invocations and
//! finds its subgroup from the built-ins, so with smaller subgroups the extra ones only help
//! staging (cooperative operations run in subgroup-uniform control flow either way).

use crate::ops::codegen::Wgsl;
use crate::runtime::Shader;
use crate::wgsl;

/// Depth of a staged K step, in elements.
pub(crate) const BK: u32 = 32;
/// Padding of a staged row, in halves: keeps rows 16-byte aligned for `coopLoad` and spreads
/// the rows over memory banks.
const PAD: u32 = 8;

/// One generated variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Variant {
    /// Cooperative matrix size: 16 (Vulkan on NVIDIA/AMD) or 8 (Metal).
    pub s: u32,
    /// 128 x 128 tiles (64 x 64 per subgroup) instead of 64 x 64 (32 x 32 per subgroup).
    pub wide: bool,
    pub trans_a: bool,
    pub trans_b: bool,
    /// C written as packed f16 (two per u32, rounded to nearest even as `to_dtype`), for an
    /// even N (so no word straddles two invocations' outputs).
    pub out_f16: bool,
}

impl Variant {
    /// Tile rows and columns per workgroup.
    pub(crate) fn tile(self) -> u32 {
        if self.wide { 128 } else { 64 }
    }

    fn index(self, emulated: bool) -> usize {
        usize::from(emulated) << 4
            | usize::from(self.s == 16)
            | usize::from(self.wide) << 1
            | usize::from(self.trans_a) << 2
            | usize::from(self.trans_b) << 3
            | usize::from(self.out_f16) << 5
    }

    fn name(self) -> String {
        format!(
            "matmul_coop{}{}{}{}{}",
            self.s,
            if self.wide { "_wide" } else { "" },
            if self.trans_a { "_ta" } else { "" },
            if self.trans_b { "_tb" } else { "" },
            if self.out_f16 { "_out_f16" } else { "" }
        )
    }

    /// Every variant, for the shader validation test.
    pub(crate) fn all() -> Vec<Variant> {
        let mut out = Vec::new();
        for s in [16, 8] {
            for wide in [false, true] {
                for trans_a in [false, true] {
                    for trans_b in [false, true] {
                        out.push(Variant {
                            s,
                            wide,
                            trans_a,
                            trans_b,
                            out_f16: false,
                        });
                    }
                }
            }
        }
        // The f16 output shares everything but the epilogue: one variant per size and tile.
        for s in [16, 8] {
            for wide in [false, true] {
                out.push(Variant {
                    s,
                    wide,
                    trans_a: false,
                    trans_b: true,
                    out_f16: true,
                });
            }
        }
        out
    }
}

/// The compiled-once module of `v`; `emulated`: the same kernel with scalar code in place of
/// the cooperative-matrix operations ([`source_for`]).
pub(crate) fn module(v: Variant, emulated: bool) -> &'static Shader {
    crate::ops::generated_shader("matmul_coop", v.index(emulated), || source_for(v, emulated))
}

/// The text of `matmul.wgsl` from the line starting with `from` through the end of the function
/// or struct that starts at `to` (its closing `}` at the start of a line): the Params layout and
/// the tile, epilogue and grid helpers, shared with the portable kernels.
fn slice_of_matmul(from: &str, to: &str) -> &'static str {
    let src = super::launch::SHADER.source;
    let start = src.find(from).expect("matmul.wgsl has the helper");
    let t = start + src[start..].find(to).expect("matmul.wgsl has the helper");
    let end = t + src[t..].find("\n}\n").expect("closing brace") + 3;
    &src[start..end]
}

/// The text of `convert.wgsl`'s function starting with `from`, through its closing brace.
fn slice_of_convert(from: &str) -> &'static str {
    let src = crate::ops::convert::launch::SHADER.source;
    let start = src.find(from).expect("convert.wgsl has the function");
    let end = start + src[start..].find("\n}\n").expect("closing brace") + 2;
    &src[start..end]
}

/// WGSL of variant `v`.
pub(crate) fn source(v: Variant) -> String {
    source_for(v, false)
}

/// WGSL of variant `v`; with `emulated`, every cooperative-matrix operation is replaced by
/// plain code with the documented semantics (each invocation holds whole matrices in private
/// arrays; `coopLoadT` reads row-major, `coopLoad` column-major, the multiply-add sums over K),
/// and the staged tiles are f32 (f16 values are exact in f32). Everything else, the staging,
/// the strides and offsets, the bounds, the subgroup split and the epilogue, is the same
/// text, so tests on an adapter without cooperative matrices (lavapipe) check all of the
/// kernel but the matrix instructions themselves.
pub(crate) fn source_for(v: Variant, emulated: bool) -> String {
    let s = v.s;
    let bm = v.tile();
    let bn = v.tile();
    // Accumulators per subgroup along M and N.
    let fm = bm / 2 / s;
    let fn_ = bn / 2 / s;
    // Staged tiles: rows along the operand's contiguous dimension.
    // A: (BM, BK) rows of K when A is (M, K); (BK, BM) rows of M when stored (K, M).
    let (a_rows, a_cols) = if v.trans_a { (BK, bm) } else { (bm, BK) };
    // B: (BK, BN) rows of N when B is (K, N); (BN, BK) rows of K when stored (N, K).
    let (b_rows, b_cols) = if v.trans_b { (bn, BK) } else { (BK, bn) };
    let (la, lb) = (a_cols + PAD, b_cols + PAD);
    let mat = format!("coop_mat{s}x{s}");
    // The staged tiles' element type.
    let el = if emulated { "f32" } else { "f16" };

    let mut o = Wgsl::new();
    wgsl!(
        o,
        "// GENERATED by ops::matmul::coop ({}): C = act(op(A) · op(B) + bias) on cooperative",
        v.name()
    );
    o.line("// matrices, f16 operands (packed two per u32), f32 accumulation and output.");
    if emulated {
        o.line("// EMULATED: scalar code in place of the cooperative-matrix operations (tests).");
    } else {
        o.line("enable f16;");
        o.line("enable wgpu_cooperative_matrix;");
    }
    o.blank();
    o.line("override WG: u32 = 128u; // invocations: 4 x the adapter's largest subgroup size");
    wgsl!(o, "const S: u32 = {s}u;");
    wgsl!(o, "const BM: u32 = {bm}u;");
    wgsl!(o, "const BN: u32 = {bn}u;");
    wgsl!(o, "const BK: u32 = {BK}u;");
    wgsl!(o, "const LA: u32 = {la}u; // staged A row length (padded)");
    wgsl!(o, "const LB: u32 = {lb}u; // staged B row length (padded)");
    o.blank();
    o.line(slice_of_matmul("struct Params {", "struct Params {"));
    o.blank();
    o.line("@group(0) @binding(0) var<uniform> p: Params;");
    o.line("@group(0) @binding(1) var<storage, read> a1: array<u32>;     // A f16 pairs: (batch.., M, K) or (batch.., K, M)");
    o.line("@group(0) @binding(2) var<storage, read> b1: array<u32>;     // B f16 pairs: (batch.., K, N) or (batch.., N, K)");
    o.line(
        "@group(0) @binding(3) var<storage, read> bias: array<f32>;   // (N), read when flags & 1",
    );
    o.line("@group(0) @binding(4) var<storage, read_write> c: array<f32>; // C: (batch.., M, N)");
    if v.out_f16 {
        o.line("@group(0) @binding(4) var<storage, read_write> ch: array<u32>; // C as f16 pairs: (batch.., M, N), N even");
    }
    o.blank();
    wgsl!(
        o,
        "var<workgroup> sa: array<{el}, {}>; // A tile, {a_rows} rows of {a_cols} (+ {PAD} pad)",
        a_rows * la
    );
    wgsl!(
        o,
        "var<workgroup> sb: array<{el}, {}>; // B tile, {b_rows} rows of {b_cols} (+ {PAD} pad)",
        b_rows * lb
    );
    o.line("var<workgroup> sc: array<f32, 4u * S * S>; // one accumulator per subgroup, row-major");
    o.blank();
    o.line(slice_of_matmul("struct Tile {", "fn flat_id("));
    o.blank();
    if v.out_f16 {
        o.line("// Bias and activation on one output, as `put` does, without the store.");
        o.line("fn epi(col: u32, v: f32) -> f32 {");
        o.line("    var x = v;");
        o.line("    if (p.flags & 1u) != 0u { x += bias[col]; }");
        o.line("    let act = (p.flags >> 1u) & 3u;");
        o.line("    if act == 1u { x = max(x, 0.0); } else if act == 2u { x = gelu_f(x); }");
        o.line("    return x;");
        o.line("}");
        o.blank();
        o.line(
            "// f32 bits to f16 bits, round to nearest even (the conversion kernels' own code).",
        );
        o.line(slice_of_convert("fn f32_to_f16("));
        o.blank();
    }
    // The stager: `rows` x `cols` elements of an operand whose rows are `so` elements apart,
    // starting at element `g0`, valid where row < `rl` and col < `cl`, into `dst` at row
    // stride `ld`.
    for (x, rows, cols, ld) in [("a", a_rows, a_cols, la), ("b", b_rows, b_cols, lb)] {
        let dst = format!("s{x}");
        wgsl!(
            o,
            "// Stage {rows} x {cols} elements of {} from element g0 (rows so apart; valid below rl, cl).",
            x.to_uppercase()
        );
        wgsl!(
            o,
            "fn stage_{x}(g0: u32, so: u32, rl: u32, cl: u32, li: u32) {{"
        );
        o.line("    if ((g0 | so) & 1u) == 0u {");
        o.line("        // Whole words: element pairs (col, col + 1) share one.");
        wgsl!(
            o,
            "        for (var q = li; q < {}u; q += WG) {{",
            rows * cols / 2
        );
        wgsl!(
            o,
            "            let r = q / {}u; let col = 2u * (q % {}u);",
            cols / 2,
            cols / 2
        );
        o.line("            var v = vec2<f32>(0.0);");
        o.line("            if r < rl && col < cl {");
        wgsl!(
            o,
            "                v = unpack2x16float({x}1[(g0 + r * so + col) / 2u]);"
        );
        o.line("                if col + 1u >= cl { v.y = 0.0; }");
        o.line("            }");
        wgsl!(o, "            {dst}[r * {ld}u + col] = {el}(v.x);");
        wgsl!(o, "            {dst}[r * {ld}u + col + 1u] = {el}(v.y);");
        o.line("        }");
        o.line("    } else {");
        wgsl!(
            o,
            "        for (var e = li; e < {}u; e += WG) {{",
            rows * cols
        );
        wgsl!(o, "            let r = e / {cols}u; let col = e % {cols}u;");
        o.line("            var v = 0.0;");
        o.line("            if r < rl && col < cl {");
        o.line("                let g = g0 + r * so + col;");
        wgsl!(
            o,
            "                v = unpack2x16float({x}1[g / 2u])[g % 2u];"
        );
        o.line("            }");
        wgsl!(o, "            {dst}[r * {ld}u + col] = {el}(v);");
        o.line("        }");
        o.line("    }");
        o.line("}");
        o.blank();
    }

    o.line("@compute @workgroup_size(WG)");
    o.line("fn mm_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,");
    o.line(
        "           @builtin(local_invocation_index) li: u32, @builtin(subgroup_size) sgs: u32,",
    );
    o.line("           @builtin(subgroup_invocation_id) lane: u32) {");
    o.line(
        "    // Cooperative operations need workgroup-uniform control flow: no early return, and",
    );
    o.line("    // workgroups past the last tile (a folded 2-D grid) redo it and store nothing.");
    o.line("    let t_id = flat_id(wid, nwg);");
    o.line("    let live = t_id < p.total;");
    o.line("    let t = tile_of(min(t_id, p.total - 1u), BM, BN);");
    o.line(
        "    // Subgroup w computes quarter w % 4 of the tile (2 x 2); with subgroups smaller than",
    );
    o.line("    // WG / 4 the extra ones repeat a quarter and leave the stores to the first.");
    o.line("    let warp = li / sgs;");
    o.line("    let first = warp < 4u;");
    wgsl!(o, "    let wm = (warp % 2u) * {}u;", bm / 2);
    wgsl!(o, "    let wn = ((warp / 2u) % 2u) * {}u;", bn / 2);
    for i in 0..fm {
        for j in 0..fn_ {
            if emulated {
                wgsl!(o, "    var acc{i}_{j}: MatC;");
            } else {
                wgsl!(o, "    var acc{i}_{j} = {mat}<f32, C>();");
            }
        }
    }
    o.line("    for (var k0 = 0u; k0 < t.kc; k0 += BK) {");
    o.line("        workgroupBarrier();");
    // Element (row 0, col 0) of each staged tile, the row stride and the valid extents.
    if v.trans_a {
        o.line("        stage_a(t.off.x + k0 * p.sak + t.m0, p.sak, t.kc - k0, p.m - min(t.m0, p.m), li);");
    } else {
        o.line("        stage_a(t.off.x + t.m0 * p.sam + k0, p.sam, p.m - min(t.m0, p.m), t.kc - k0, li);");
    }
    if v.trans_b {
        o.line("        stage_b(t.off.y + t.n0 * p.sbn + k0 * p.sbk, p.sbn, p.n - min(t.n0, p.n), t.kc - k0, li);");
    } else {
        o.line("        stage_b(t.off.y + k0 * p.sbk + t.n0, p.sbk, t.kc - k0, p.n - min(t.n0, p.n), li);");
    }
    o.line("        workgroupBarrier();");
    wgsl!(o, "        for (var kk = 0u; kk < BK; kk += S) {{");
    for i in 0..fm {
        let (load, at) = if v.trans_a {
            ("coopLoad", format!("kk * LA + wm + {}u", i * s))
        } else {
            ("coopLoadT", format!("(wm + {}u) * LA + kk", i * s))
        };
        if emulated {
            let rm = load == "coopLoadT";
            wgsl!(o, "            let fa{i} = Frag({at}, LA, {rm});");
        } else {
            wgsl!(
                o,
                "            let fa{i} = {load}<{mat}<f16, A>>(&sa[{at}], LA);"
            );
        }
    }
    for j in 0..fn_ {
        let (load, at) = if v.trans_b {
            ("coopLoad", format!("(wn + {}u) * LB + kk", j * s))
        } else {
            ("coopLoadT", format!("kk * LB + wn + {}u", j * s))
        };
        if emulated {
            let rm = load == "coopLoadT";
            wgsl!(o, "            let fb{j} = Frag({at}, LB, {rm});");
        } else {
            wgsl!(
                o,
                "            let fb{j} = {load}<{mat}<f16, B>>(&sb[{at}], LB);"
            );
        }
    }
    for i in 0..fm {
        for j in 0..fn_ {
            if emulated {
                wgsl!(o, "            em_mma(&acc{i}_{j}, fa{i}, fb{j});");
            } else {
                wgsl!(
                    o,
                    "            acc{i}_{j} = coopMultiplyAdd(fa{i}, fb{j}, acc{i}_{j});"
                );
            }
        }
    }
    o.line("        }");
    o.line("    }");
    o.line("    // Epilogue: each accumulator through the subgroup's scratch tile to C.");
    o.line("    let sc0 = (warp % 4u) * S * S;");
    for i in 0..fm {
        for j in 0..fn_ {
            o.line("    workgroupBarrier();");
            if emulated {
                wgsl!(o, "    em_store(&acc{i}_{j}, sc0);");
            } else {
                wgsl!(o, "    coopStoreT(acc{i}_{j}, &sc[sc0], S);");
            }
            o.line("    workgroupBarrier();");
            o.line("    if live && first {");
            if v.out_f16 {
                // Adjacent pairs (even column first): one word each, N even.
                o.line("        for (var e = 2u * lane; e < S * S; e += 2u * sgs) {");
            } else {
                o.line("        for (var e = lane; e < S * S; e += sgs) {");
            }
            wgsl!(o, "            let row = t.m0 + wm + {}u + e / S;", i * s);
            wgsl!(o, "            let col = t.n0 + wn + {}u + e % S;", j * s);
            if v.out_f16 {
                o.line("            if row < p.m && col < p.n {");
                o.line("                let lo = f32_to_f16(bitcast<u32>(epi(col, sc[sc0 + e])));");
                o.line("                let hi = f32_to_f16(bitcast<u32>(epi(col + 1u, sc[sc0 + e + 1u])));");
                o.line("                ch[(t.co + row * p.n + col) / 2u] = lo | (hi << 16u);");
                o.line("            }");
            } else {
                o.line("            if row < p.m && col < p.n { put(t.co + row * p.n + col, col, sc[sc0 + e]); }");
            }
            o.line("        }");
            o.line("    }");
        }
    }
    o.line("}");
    if emulated {
        emulation(&mut o, s);
    }
    o.finish()
}

/// The scalar stand-ins for the cooperative-matrix operations. A loaded fragment is where it
/// lies in the staged tile (the tile does not change before the next barrier); each invocation
/// holds whole accumulators, passed by pointer (matrices passed by value, or unrolled loops,
/// made lavapipe's compiler take minutes). Loops run S² times per call and the sums over K are
/// unrolled: lavapipe ends an invocation after 65,535 loop iterations, which the test shapes
/// stay under with the 64 x 64 tiles.
fn emulation(o: &mut Wgsl, s: u32) {
    o.blank();
    o.line("// ---- emulation of the cooperative-matrix operations ----");
    o.line(
        "struct Frag { b: u32, st: u32, rm: bool } // first element, stride, row-major (coopLoadT)",
    );
    wgsl!(
        o,
        "alias MatC = array<f32, {}>; // (r, n) at r * S + n",
        s * s
    );
    // coopLoadT (row-major): element (r, c) at b + r * st + c; coopLoad: at b + c * st + r.
    o.line("fn ea(f: Frag, r: u32, k: u32) -> f32 { return sa[select(f.b + k * f.st + r, f.b + r * f.st + k, f.rm)]; }");
    o.line("fn eb(f: Frag, k: u32, n: u32) -> f32 { return sb[select(f.b + n * f.st + k, f.b + k * f.st + n, f.rm)]; }");
    // Lavapipe's compiler inlines every call: keep the bodies loops, the sums over K unrolled.
    o.line("fn em_mma(c: ptr<function, MatC>, a: Frag, b: Frag) {");
    o.line("    for (var e = 0u; e < S * S; e++) {");
    o.line("        let r = e / S; let n = e % S;");
    let terms: Vec<String> = (0..s)
        .map(|k| format!("ea(a, r, {k}u) * eb(b, {k}u, n)"))
        .collect();
    wgsl!(o, "        (*c)[e] += {};", terms.join(" + "));
    o.line("    }");
    o.line("}");
    o.line("fn em_store(m: ptr<function, MatC>, b: u32) {");
    o.line("    for (var e = 0u; e < S * S; e++) { sc[b + e] = (*m)[e]; }");
    o.line("}");
}

/// Every variant's (name, source), emulated ones too, for the shader validation test.
pub(crate) fn all_sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for v in Variant::all() {
        out.push((v.name(), source(v)));
        out.push((format!("{}_emulated", v.name()), source_for(v, true)));
    }
    out
}
