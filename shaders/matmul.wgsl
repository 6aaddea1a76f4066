// Matmul C = act(op(A) · op(B) + bias) for adapters of every kind, without subgroups.
//
//   mm_tiled_v4 / mm_tiled  The GPU kernel. A 256-invocation workgroup computes a (16*TM) x 64
//                           tile of C through workgroup-memory tiles of depth BK; each invocation
//                           owns a TM x 4 register block (TM = 4 or 8: 4x4 or 8x4).
//                           _v4 loads global memory as vec4 (alignment below); the plain entry
//                           loads scalars through element strides, for any shape and layout.
//   mm_wide_v4              The GPU kernel for large products: 128 x 128 tiles, 8x8 register
//                           blocks, the next depth slice prefetched into registers.
//   mm_rows_v4 / mm_rows    No workgroup memory: each invocation owns RB (1..4) rows x 4 columns
//                           and streams A and B itself. With RB = M <= 4 it is the GEMV path
//                           for decode shapes (1 x 768 · 768 x 50257: each B row is read once,
//                           in vec4s, by adjacent invocations); it is also the fallback for
//                           software adapters without subgroups, where workgroup memory and
//                           barriers only cost.
//
// vec4 entries need K % 4 == 0, N % 4 == 0 unless TRANS_B, and M % 4 == 0 if TRANS_A
// (mm_rows_v4 does not take TRANS_A). Every entry clamps indices into the operands and zeroes
// what lies outside them, so any M, N, K is correct; outputs outside C are never stored.
// Tiles are numbered over (batch, column panel, row tile), rows fastest, on a 1-D grid folded
// into 2-D past 65,535 workgroups.

override TRANS_A: bool = false; // A is stored (K, M): read Aᵀ in place (vec4 entries)
override TRANS_B: bool = false; // B is stored (N, K): read Bᵀ in place (vec4 entries)
override TM: u32 = 4u;          // mm_tiled*: rows per invocation (4 or 8)
override BK: u32 = 16u;         // mm_tiled*: depth of the workgroup-memory tiles (multiple of 4)
override RB: u32 = 4u;          // mm_rows*: rows per invocation (1..4)
override CB: u32 = 1u;          // mm_rows*: vec4 column groups per invocation (1..4)
override RW: u32 = 64u;         // mm_rows*: invocations per workgroup, along N

const WGX: u32 = 16u; // mm_tiled*: invocations along N (4 columns each: BN = 64)
const WGY: u32 = 16u; // mm_tiled*: invocations along M (TM rows each: BM = 16 * TM)
const BN: u32 = 64u;

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
    slices: u32,   // slices of K in this dispatch (split-K on GPUs; 1 otherwise)
    ks: u32,       // K per slice; slice s sums k0 + s * ks .. and writes C block s
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

// A tile, k-major: element (m, k) of the tile is sa[k * BM / 4 + m / 4][m % 4], BM = 16 * TM.
var<workgroup> sa: array<vec4<f32>, BK * TM * 4u>;
// B tile, k-major: element (k, n) is sb[k * 16 + n / 4][n % 4].
var<workgroup> sb: array<vec4<f32>, BK * 16u>;

struct Tile {
    off: vec2<u32>, // element offsets of this batch item's A and B (at its slice's first k)
    co: u32,        // element offset of this batch item's C
    m0: u32,        // first row of the tile
    n0: u32,        // first column of the tile
    kc: u32,        // K this tile sums over
}

// Tile `t` of the dispatch with `bm` x `bn` tiles. With split-K the slice is the outermost
// index: slice s covers K from s * ks and writes its partial C to block s of the output.
fn tile_of(t_in: u32, bm: u32, bn: u32) -> Tile {
    let per = p.total / p.slices;
    let s = t_in / per;
    let t = t_in % per;
    let bi = t / p.tiles;
    let tile = t % p.tiles;
    var rem = bi;
    var o = vec2<u32>(0u, 0u);
    for (var i = 0u; i < 4u; i++) {
        let d = 3u - i;
        let sz = p.bdims[d];
        let j = rem % sz;
        rem = rem / sz;
        o += j * vec2<u32>(p.bsa[d], p.bsb[d]);
    }
    let kb = s * p.ks;
    let ko = vec2<u32>(kb * p.sak, kb * p.sbk);
    let co = (s * (per / p.tiles) + bi) * p.m * p.n;
    return Tile(o + vec2<u32>(p.a0, p.b0) + ko, co, (tile % p.tiles_m) * bm, (tile / p.tiles_m) * bn, min(p.ks, p.kc - kb));
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

// Bias and activation on one output, then the store. `i` indexes C; `col` is its column.
fn put(i: u32, col: u32, v: f32) {
    var x = v;
    if (p.flags & 1u) != 0u {
        x += bias[col];
    }
    let act = (p.flags >> 1u) & 3u;
    if act == 1u {
        x = max(x, 0.0);
    } else if act == 2u {
        x = gelu_f(x);
    }
    c[i] = x;
}

// Store 4 adjacent outputs of row `row` from column `col`, skipping those outside C.
fn store4(co: u32, row: u32, col: u32, v: vec4<f32>) {
    if row >= p.m {
        return;
    }
    let i = co + row * p.n + col;
    if col < p.n { put(i, col, v.x); }
    if col + 1u < p.n { put(i + 1u, col + 1u, v.y); }
    if col + 2u < p.n { put(i + 2u, col + 2u, v.z); }
    if col + 3u < p.n { put(i + 3u, col + 3u, v.w); }
}

fn flat_id(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// ---------------------------------------------------------------------------------------------
// Workgroup-memory tiles (GPUs).

// Element (m, k) of A, zero outside the matrix; scalar entry.
fn a_at(t: Tile, m: u32, k: u32) -> f32 {
    let v = a1[t.off.x + min(m, p.m - 1u) * p.sam + min(k, t.kc - 1u) * p.sak];
    return select(0.0, v, m < p.m && k < t.kc);
}

// Element (k, n) of B, zero outside the matrix; scalar entry.
fn b_at(t: Tile, k: u32, n: u32) -> f32 {
    let v = b1[t.off.y + min(k, t.kc - 1u) * p.sbk + min(n, p.n - 1u) * p.sbn];
    return select(0.0, v, k < t.kc && n < p.n);
}

// Stage the A and B tiles at depth k0 through scalar loads. Consecutive invocations read
// consecutive addresses of whichever dimension is contiguous.
fn stage_scalar(t: Tile, k0: u32, lid: u32) {
    let bm = WGY * TM;
    for (var e = lid; e < bm * BK; e += WGX * WGY) {
        var m: u32;
        var k: u32;
        if p.sak == 1u {
            m = e / BK;
            k = e % BK;
        } else {
            m = e % bm;
            k = e / bm;
        }
        sa[k * (bm / 4u) + m / 4u][m % 4u] = a_at(t, t.m0 + m, k0 + k);
    }
    for (var e = lid; e < BN * BK; e += WGX * WGY) {
        var n: u32;
        var k: u32;
        if p.sbn == 1u {
            n = e % BN;
            k = e / BN;
        } else {
            n = e / BK;
            k = e % BK;
        }
        sb[k * (BN / 4u) + n / 4u][n % 4u] = b_at(t, k0 + k, t.n0 + n);
    }
}

// Stage the tiles through vec4 loads (aligned operands). A vec4 that starts inside the matrix
// lies wholly inside it; one that starts outside is replaced by zeros.
fn stage_v4(t: Tile, k0: u32, lid: u32) {
    let bm = WGY * TM;
    for (var e = lid; e < bm * BK / 4u; e += WGX * WGY) {
        if TRANS_A {
            // A is (K, M): vec4 along m, stored as is.
            let k = e / (bm / 4u);
            let mq = e % (bm / 4u);
            let gm = t.m0 + 4u * mq;
            let gk = k0 + k;
            let v = a4[(t.off.x + min(gk, t.kc - 1u) * p.m + min(gm, p.m - 4u)) / 4u];
            sa[e] = select(vec4<f32>(0.0), v, gm < p.m && gk < t.kc);
        } else {
            // A is (M, K): vec4 along k, transposed into the k-major tile.
            let m = e / (BK / 4u);
            let kq = e % (BK / 4u);
            let gm = t.m0 + m;
            let gk = k0 + 4u * kq;
            let v = select(vec4<f32>(0.0), a4[(t.off.x + min(gm, p.m - 1u) * p.k + min(gk, t.kc - 4u)) / 4u], gm < p.m && gk < t.kc);
            let s = (4u * kq) * (bm / 4u) + m / 4u;
            sa[s][m % 4u] = v.x;
            sa[s + bm / 4u][m % 4u] = v.y;
            sa[s + 2u * (bm / 4u)][m % 4u] = v.z;
            sa[s + 3u * (bm / 4u)][m % 4u] = v.w;
        }
    }
    for (var e = lid; e < BN * BK / 4u; e += WGX * WGY) {
        if TRANS_B {
            // B is (N, K): vec4 along k, transposed into the k-major tile.
            let n = e / (BK / 4u);
            let kq = e % (BK / 4u);
            let gn = t.n0 + n;
            let gk = k0 + 4u * kq;
            let v = select(vec4<f32>(0.0), b4[(t.off.y + min(gn, p.n - 1u) * p.k + min(gk, t.kc - 4u)) / 4u], gn < p.n && gk < t.kc);
            let s = (4u * kq) * (BN / 4u) + n / 4u;
            sb[s][n % 4u] = v.x;
            sb[s + BN / 4u][n % 4u] = v.y;
            sb[s + 2u * (BN / 4u)][n % 4u] = v.z;
            sb[s + 3u * (BN / 4u)][n % 4u] = v.w;
        } else {
            // B is (K, N): vec4 along n, stored as is.
            let k = e / (BN / 4u);
            let nq = e % (BN / 4u);
            let gk = k0 + k;
            let gn = t.n0 + 4u * nq;
            let v = b4[(t.off.y + min(gk, t.kc - 1u) * p.n + min(gn, p.n - 4u)) / 4u];
            sb[e] = select(vec4<f32>(0.0), v, gn < p.n && gk < t.kc);
        }
    }
}

// One staged depth: acc[i] += A[row i, k] * B[k, 4 columns] for the invocation's block.
// Constant indices only: an accumulator indexed through a loop variable can land in local
// memory on a GPU instead of registers.
fn tile_fma(acc: ptr<function, array<vec4<f32>, 8>>, tx: u32, ty: u32) {
    let bm4 = WGY * TM / 4u;
    for (var k = 0u; k < BK; k++) {
        let b = sb[k * (BN / 4u) + tx];
        let a = sa[k * bm4 + ty * (TM / 4u)];
        (*acc)[0] = fma(vec4<f32>(a.x), b, (*acc)[0]);
        (*acc)[1] = fma(vec4<f32>(a.y), b, (*acc)[1]);
        (*acc)[2] = fma(vec4<f32>(a.z), b, (*acc)[2]);
        (*acc)[3] = fma(vec4<f32>(a.w), b, (*acc)[3]);
        if TM == 8u {
            let a2 = sa[k * bm4 + ty * 2u + 1u];
            (*acc)[4] = fma(vec4<f32>(a2.x), b, (*acc)[4]);
            (*acc)[5] = fma(vec4<f32>(a2.y), b, (*acc)[5]);
            (*acc)[6] = fma(vec4<f32>(a2.z), b, (*acc)[6]);
            (*acc)[7] = fma(vec4<f32>(a2.w), b, (*acc)[7]);
        }
    }
}

fn tiled_store(t: Tile, acc: ptr<function, array<vec4<f32>, 8>>, tx: u32, ty: u32) {
    let r = t.m0 + ty * TM;
    let c = t.n0 + 4u * tx;
    store4(t.co, r, c, (*acc)[0]);
    store4(t.co, r + 1u, c, (*acc)[1]);
    store4(t.co, r + 2u, c, (*acc)[2]);
    store4(t.co, r + 3u, c, (*acc)[3]);
    if TM == 8u {
        store4(t.co, r + 4u, c, (*acc)[4]);
        store4(t.co, r + 5u, c, (*acc)[5]);
        store4(t.co, r + 6u, c, (*acc)[6]);
        store4(t.co, r + 7u, c, (*acc)[7]);
    }
}

@compute @workgroup_size(WGX, WGY)
fn mm_tiled_v4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let tid = flat_id(wid, nwg);
    if tid >= p.total {
        return;
    }
    let t = tile_of(tid, WGY * TM, BN);
    var acc: array<vec4<f32>, 8>;
    for (var k0 = 0u; k0 < t.kc; k0 += BK) {
        stage_v4(t, k0, li);
        workgroupBarrier();
        tile_fma(&acc, lid.x, lid.y);
        workgroupBarrier();
    }
    tiled_store(t, &acc, lid.x, lid.y);
}

@compute @workgroup_size(WGX, WGY)
fn mm_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let tid = flat_id(wid, nwg);
    if tid >= p.total {
        return;
    }
    let t = tile_of(tid, WGY * TM, BN);
    var acc: array<vec4<f32>, 8>;
    for (var k0 = 0u; k0 < t.kc; k0 += BK) {
        stage_scalar(t, k0, li);
        workgroupBarrier();
        tile_fma(&acc, lid.x, lid.y);
        workgroupBarrier();
    }
    tiled_store(t, &acc, lid.x, lid.y);
}

// ---------------------------------------------------------------------------------------------
// mm_wide_v4: 128 x 128 tiles for large products on GPUs. 256 invocations, each owning 8 rows x
// 8 columns (two 4-column groups 64 apart, so 16 adjacent invocations read 16 adjacent vec4s of
// the B tile). Per depth step it reads 4 vec4s from workgroup memory for 64 FMAs, twice the
// ratio of the 8 x 4 block. The next depth slice is loaded into registers while the current
// one is multiplied, so global latency overlaps arithmetic. 16 KiB of workgroup memory (the
// WebGPU default limit). Same operand rules as mm_tiled_v4 (TRANS_A, TRANS_B, vec4 alignment).

const WBK: u32 = 16u;  // depth of a staged slice
const WB: u32 = 128u;  // tile rows and columns
const WB4: u32 = 32u;  // WB / 4

// A slice, k-major: element (m, k) is wa[k * WB4 + m / 4][m % 4].
var<workgroup> wa: array<vec4<f32>, 512>; // WBK * WB4
// B slice, k-major: element (k, n) is wb[k * WB4 + n / 4][n % 4].
var<workgroup> wb: array<vec4<f32>, 512>;

// The 4 vec4s this invocation moves per slice: 2 of A, 2 of B (each operand slice holds 512).
struct Slice {
    a: array<vec4<f32>, 2>,
    b: array<vec4<f32>, 2>,
}

// Global vec4 number `e` (0..512) of the A slice at depth k0, zero outside the matrix.
fn wide_a(t: Tile, k0: u32, e: u32) -> vec4<f32> {
    if TRANS_A {
        // (K, M): vec4 along m.
        let gk = k0 + e / WB4;
        let gm = t.m0 + 4u * (e % WB4);
        let v = a4[(t.off.x + min(gk, t.kc - 1u) * p.m + min(gm, p.m - 4u)) / 4u];
        return select(vec4<f32>(0.0), v, gm < p.m && gk < t.kc);
    }
    // (M, K): vec4 along k; 4 adjacent invocations cover 16 floats of one row.
    let gm = t.m0 + e / 4u;
    let gk = k0 + 4u * (e % 4u);
    let v = a4[(t.off.x + min(gm, p.m - 1u) * p.k + min(gk, t.kc - 4u)) / 4u];
    return select(vec4<f32>(0.0), v, gm < p.m && gk < t.kc);
}

fn wide_b(t: Tile, k0: u32, e: u32) -> vec4<f32> {
    if TRANS_B {
        // (N, K): vec4 along k.
        let gn = t.n0 + e / 4u;
        let gk = k0 + 4u * (e % 4u);
        let v = b4[(t.off.y + min(gn, p.n - 1u) * p.k + min(gk, t.kc - 4u)) / 4u];
        return select(vec4<f32>(0.0), v, gn < p.n && gk < t.kc);
    }
    // (K, N): vec4 along n.
    let gk = k0 + e / WB4;
    let gn = t.n0 + 4u * (e % WB4);
    let v = b4[(t.off.y + min(gk, t.kc - 1u) * p.n + min(gn, p.n - 4u)) / 4u];
    return select(vec4<f32>(0.0), v, gn < p.n && gk < t.kc);
}

fn wide_load(t: Tile, k0: u32, li: u32) -> Slice {
    var s: Slice;
    s.a[0] = wide_a(t, k0, li);
    s.a[1] = wide_a(t, k0, li + 256u);
    s.b[0] = wide_b(t, k0, li);
    s.b[1] = wide_b(t, k0, li + 256u);
    return s;
}

// Write vec4 number `e` of an operand slice into its k-major tile; a vec4 that runs along k
// (row-major A, or Bᵀ) is scattered over 4 depths.
fn wide_put_a(e: u32, v: vec4<f32>) {
    if TRANS_A {
        wa[e] = v;
    } else {
        let m = e / 4u;
        let s = 4u * (e % 4u) * WB4 + m / 4u;
        wa[s][m % 4u] = v.x;
        wa[s + WB4][m % 4u] = v.y;
        wa[s + 2u * WB4][m % 4u] = v.z;
        wa[s + 3u * WB4][m % 4u] = v.w;
    }
}

fn wide_put_b(e: u32, v: vec4<f32>) {
    if TRANS_B {
        let n = e / 4u;
        let s = 4u * (e % 4u) * WB4 + n / 4u;
        wb[s][n % 4u] = v.x;
        wb[s + WB4][n % 4u] = v.y;
        wb[s + 2u * WB4][n % 4u] = v.z;
        wb[s + 3u * WB4][n % 4u] = v.w;
    } else {
        wb[e] = v;
    }
}

// acc[2 r + g] += A[row r] * B[group g] over one staged slice (constant accumulator indices).
fn wide_fma(acc: ptr<function, array<vec4<f32>, 16>>, tx: u32, ty: u32) {
    for (var k = 0u; k < WBK; k++) {
        let a0 = wa[k * WB4 + 2u * ty];
        let a1 = wa[k * WB4 + 2u * ty + 1u];
        let b0 = wb[k * WB4 + tx];
        let b1 = wb[k * WB4 + 16u + tx];
        (*acc)[0] = fma(vec4<f32>(a0.x), b0, (*acc)[0]);
        (*acc)[1] = fma(vec4<f32>(a0.x), b1, (*acc)[1]);
        (*acc)[2] = fma(vec4<f32>(a0.y), b0, (*acc)[2]);
        (*acc)[3] = fma(vec4<f32>(a0.y), b1, (*acc)[3]);
        (*acc)[4] = fma(vec4<f32>(a0.z), b0, (*acc)[4]);
        (*acc)[5] = fma(vec4<f32>(a0.z), b1, (*acc)[5]);
        (*acc)[6] = fma(vec4<f32>(a0.w), b0, (*acc)[6]);
        (*acc)[7] = fma(vec4<f32>(a0.w), b1, (*acc)[7]);
        (*acc)[8] = fma(vec4<f32>(a1.x), b0, (*acc)[8]);
        (*acc)[9] = fma(vec4<f32>(a1.x), b1, (*acc)[9]);
        (*acc)[10] = fma(vec4<f32>(a1.y), b0, (*acc)[10]);
        (*acc)[11] = fma(vec4<f32>(a1.y), b1, (*acc)[11]);
        (*acc)[12] = fma(vec4<f32>(a1.z), b0, (*acc)[12]);
        (*acc)[13] = fma(vec4<f32>(a1.z), b1, (*acc)[13]);
        (*acc)[14] = fma(vec4<f32>(a1.w), b0, (*acc)[14]);
        (*acc)[15] = fma(vec4<f32>(a1.w), b1, (*acc)[15]);
    }
}

@compute @workgroup_size(16, 16)
fn mm_wide_v4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let tid = flat_id(wid, nwg);
    if tid >= p.total {
        return;
    }
    let t = tile_of(tid, WB, WB);
    var acc: array<vec4<f32>, 16>;
    var next = wide_load(t, 0u, li);
    for (var k0 = 0u; k0 < t.kc; k0 += WBK) {
        wide_put_a(li, next.a[0]);
        wide_put_a(li + 256u, next.a[1]);
        wide_put_b(li, next.b[0]);
        wide_put_b(li + 256u, next.b[1]);
        workgroupBarrier();
        if k0 + WBK < t.kc {
            next = wide_load(t, k0 + WBK, li);
        }
        wide_fma(&acc, lid.x, lid.y);
        workgroupBarrier();
    }
    let row = t.m0 + 8u * lid.y;
    let c0 = t.n0 + 4u * lid.x;
    // Unrolled: constant accumulator indices keep acc in registers.
    store4(t.co, row + 0u, c0, acc[0]);
    store4(t.co, row + 0u, c0 + 64u, acc[1]);
    store4(t.co, row + 1u, c0, acc[2]);
    store4(t.co, row + 1u, c0 + 64u, acc[3]);
    store4(t.co, row + 2u, c0, acc[4]);
    store4(t.co, row + 2u, c0 + 64u, acc[5]);
    store4(t.co, row + 3u, c0, acc[6]);
    store4(t.co, row + 3u, c0 + 64u, acc[7]);
    store4(t.co, row + 4u, c0, acc[8]);
    store4(t.co, row + 4u, c0 + 64u, acc[9]);
    store4(t.co, row + 5u, c0, acc[10]);
    store4(t.co, row + 5u, c0 + 64u, acc[11]);
    store4(t.co, row + 6u, c0, acc[12]);
    store4(t.co, row + 6u, c0 + 64u, acc[13]);
    store4(t.co, row + 7u, c0, acc[14]);
    store4(t.co, row + 7u, c0 + 64u, acc[15]);
}

// ---------------------------------------------------------------------------------------------
// Register blocks without workgroup memory (GEMV, and software adapters without subgroups).
// An invocation owns RB rows x CB vec4 column groups; group j of invocation li starts at
// column n0 + 4 * (li + RW * j), so each group of the workgroup reads RW * 16 contiguous bytes
// of a row of B. Straight-line over rows and groups (RB and CB are overrides, so the `RB > i`
// tests fold away): the K loop is the only loop, because lavapipe ends an invocation after
// 65,535 loop iterations in all, which K / 4 iterations respect up to K ~ 262k.

// acc + A[row, k..k+4] · B[k..k+4, 4 columns].
fn fr(acc: vec4<f32>, a: vec4<f32>, b0: vec4<f32>, b1v: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(a.w), b3, fma(vec4<f32>(a.z), b2, fma(vec4<f32>(a.y), b1v, fma(vec4<f32>(a.x), b0, acc))));
}

// Column group j: acc[4 i + j] += A[row i, k..k+4] · B[k..k+4, the group's 4 columns].
fn rows_group(acc: ptr<function, array<vec4<f32>, 16>>, j: u32, a: array<vec4<f32>, 4>, b: array<vec4<f32>, 4>) {
    (*acc)[j] = fr((*acc)[j], a[0], b[0], b[1], b[2], b[3]);
    if RB > 1u { (*acc)[4u + j] = fr((*acc)[4u + j], a[1], b[0], b[1], b[2], b[3]); }
    if RB > 2u { (*acc)[8u + j] = fr((*acc)[8u + j], a[2], b[0], b[1], b[2], b[3]); }
    if RB > 3u { (*acc)[12u + j] = fr((*acc)[12u + j], a[3], b[0], b[1], b[2], b[3]); }
}

fn rows_store(t: Tile, acc: ptr<function, array<vec4<f32>, 16>>, j: u32, col: u32) {
    store4(t.co, t.m0, col, (*acc)[j]);
    if RB > 1u { store4(t.co, t.m0 + 1u, col, (*acc)[4u + j]); }
    if RB > 2u { store4(t.co, t.m0 + 2u, col, (*acc)[8u + j]); }
    if RB > 3u { store4(t.co, t.m0 + 3u, col, (*acc)[12u + j]); }
}

// vec4 index of row m0 + r of A as (M, K), clamped into A: its output is never stored.
fn a_row4(t: Tile, r: u32) -> u32 {
    return (t.off.x + min(t.m0 + r, p.m - 1u) * p.k) / 4u;
}

// Rows 4k..4k+4 of B at the 4 columns from `col` (vec4 entry); Bᵀ is transposed in registers.
fn rows_b4(t: Tile, col: u32, k: u32) -> array<vec4<f32>, 4> {
    if TRANS_B {
        // B is (N, K): each of the 4 columns as a vec4 along k.
        let u0 = b4[(t.off.y + min(col, p.n - 1u) * p.k) / 4u + k];
        let u1 = b4[(t.off.y + min(col + 1u, p.n - 1u) * p.k) / 4u + k];
        let u2 = b4[(t.off.y + min(col + 2u, p.n - 1u) * p.k) / 4u + k];
        let u3 = b4[(t.off.y + min(col + 3u, p.n - 1u) * p.k) / 4u + k];
        return array<vec4<f32>, 4>(
            vec4<f32>(u0.x, u1.x, u2.x, u3.x),
            vec4<f32>(u0.y, u1.y, u2.y, u3.y),
            vec4<f32>(u0.z, u1.z, u2.z, u3.z),
            vec4<f32>(u0.w, u1.w, u2.w, u3.w));
    }
    let n4 = p.n / 4u;
    let q = t.off.y / 4u + min(col / 4u, n4 - 1u) + 4u * k * n4;
    return array<vec4<f32>, 4>(b4[q], b4[q + n4], b4[q + 2u * n4], b4[q + 3u * n4]);
}

@compute @workgroup_size(RW)
fn mm_rows_v4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let tid = flat_id(wid, nwg);
    if tid >= p.total {
        return;
    }
    let t = tile_of(tid, RB, 4u * RW * CB);
    let c0 = t.n0 + 4u * li;
    let cs = 4u * RW;
    let ar0 = a_row4(t, 0u);
    let ar1 = a_row4(t, 1u);
    let ar2 = a_row4(t, 2u);
    let ar3 = a_row4(t, 3u);
    var acc: array<vec4<f32>, 16>;
    for (var k = 0u; k < p.kc / 4u; k++) {
        var a: array<vec4<f32>, 4>;
        a[0] = a4[ar0 + k];
        if RB > 1u { a[1] = a4[ar1 + k]; }
        if RB > 2u { a[2] = a4[ar2 + k]; }
        if RB > 3u { a[3] = a4[ar3 + k]; }
        rows_group(&acc, 0u, a, rows_b4(t, c0, k));
        if CB > 1u { rows_group(&acc, 1u, a, rows_b4(t, c0 + cs, k)); }
        if CB > 2u { rows_group(&acc, 2u, a, rows_b4(t, c0 + 2u * cs, k)); }
        if CB > 3u { rows_group(&acc, 3u, a, rows_b4(t, c0 + 3u * cs, k)); }
    }
    rows_store(t, &acc, 0u, c0);
    if CB > 1u { rows_store(t, &acc, 1u, c0 + cs); }
    if CB > 2u { rows_store(t, &acc, 2u, c0 + 2u * cs); }
    if CB > 3u { rows_store(t, &acc, 3u, c0 + 3u * cs); }
}

// 4 elements of A's row at `ar` (element index), k-strided, zero past K.
fn rows_a(ar: u32, ka: vec4<u32>, live: vec4<bool>) -> vec4<f32> {
    return select(vec4<f32>(0.0), vec4<f32>(a1[ar + ka.x], a1[ar + ka.y], a1[ar + ka.z], a1[ar + ka.w]), live);
}

// Rows k..k+4 of B (element offsets `kb`) at the 4 columns from `col`, zero past K.
fn rows_b(t: Tile, col: u32, kb: vec4<u32>, live: vec4<bool>) -> array<vec4<f32>, 4> {
    let bc = vec4<u32>(t.off.y) + min(vec4<u32>(col) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u)) * p.sbn;
    let z = vec4<f32>(0.0);
    return array<vec4<f32>, 4>(
        select(z, vec4<f32>(b1[bc.x + kb.x], b1[bc.y + kb.x], b1[bc.z + kb.x], b1[bc.w + kb.x]), live.x),
        select(z, vec4<f32>(b1[bc.x + kb.y], b1[bc.y + kb.y], b1[bc.z + kb.y], b1[bc.w + kb.y]), live.y),
        select(z, vec4<f32>(b1[bc.x + kb.z], b1[bc.y + kb.z], b1[bc.z + kb.z], b1[bc.w + kb.z]), live.z),
        select(z, vec4<f32>(b1[bc.x + kb.w], b1[bc.y + kb.w], b1[bc.z + kb.w], b1[bc.w + kb.w]), live.w));
}

@compute @workgroup_size(RW)
fn mm_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let tid = flat_id(wid, nwg);
    if tid >= p.total {
        return;
    }
    let t = tile_of(tid, RB, 4u * RW * CB);
    let c0 = t.n0 + 4u * li;
    let cs = 4u * RW;
    let ar0 = t.off.x + min(t.m0, p.m - 1u) * p.sam;
    let ar1 = t.off.x + min(t.m0 + 1u, p.m - 1u) * p.sam;
    let ar2 = t.off.x + min(t.m0 + 2u, p.m - 1u) * p.sam;
    let ar3 = t.off.x + min(t.m0 + 3u, p.m - 1u) * p.sam;
    let kmax = vec4<u32>(max(p.kc, 1u) - 1u);
    var acc: array<vec4<f32>, 16>;
    for (var k = 0u; k < p.kc; k += 4u) {
        let kv = vec4<u32>(k) + vec4<u32>(0u, 1u, 2u, 3u);
        let live = kv < vec4<u32>(p.kc);
        let ks = min(kv, kmax);
        let ka = ks * p.sak;
        let kb = ks * p.sbk;
        var a: array<vec4<f32>, 4>;
        a[0] = rows_a(ar0, ka, live);
        if RB > 1u { a[1] = rows_a(ar1, ka, live); }
        if RB > 2u { a[2] = rows_a(ar2, ka, live); }
        if RB > 3u { a[3] = rows_a(ar3, ka, live); }
        rows_group(&acc, 0u, a, rows_b(t, c0, kb, live));
        if CB > 1u { rows_group(&acc, 1u, a, rows_b(t, c0 + cs, kb, live)); }
        if CB > 2u { rows_group(&acc, 2u, a, rows_b(t, c0 + 2u * cs, kb, live)); }
        if CB > 3u { rows_group(&acc, 3u, a, rows_b(t, c0 + 3u * cs, kb, live)); }
    }
    rows_store(t, &acc, 0u, c0);
    if CB > 1u { rows_store(t, &acc, 1u, c0 + cs); }
    if CB > 2u { rows_store(t, &acc, 2u, c0 + 2u * cs); }
    if CB > 3u { rows_store(t, &acc, 3u, c0 + 3u * cs); }
}

// ---------------------------------------------------------------------------------------------
// mm_gemv_v4: M <= 4 rows (decode) on GPUs. Memory bound, so the aim is many loads in flight:
// K is split over the invocations of a workgroup and the partial sums are added through
// workgroup memory. B (K, N): 32 invocations per 4-column group x 8 slices of K, 128 columns
// per workgroup. Bᵀ stored (N, K): 32 invocations along K per column, 8 columns per workgroup,
// so a warp reads 512 contiguous bytes of a row. RB rows of A (override), vec4 operands.

const GL: u32 = 32u; // lanes along K (Bᵀ) or along columns (B)
const GS: u32 = 8u;  // slices of K (B) or columns (Bᵀ) per workgroup

var<workgroup> gpart: array<vec4<f32>, 1024>; // (RB <= 4, 256) partial sums

@compute @workgroup_size(256)
fn mm_gemv_v4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let tid = flat_id(wid, nwg);
    if tid >= p.total {
        return; // whole workgroups only: the barrier below stays uniform
    }
    let lane = li % GL;
    let slot = li / GL;
    let k4 = p.kc / 4u;
    var acc: array<vec4<f32>, 4>;
    if TRANS_B {
        let t = tile_of(tid, RB, GS);
        let col = t.n0 + slot;
        let br = (t.off.y + min(col, p.n - 1u) * p.k) / 4u;
        let a0 = a_row4(t, 0u);
        let a1 = a_row4(t, 1u);
        let a2 = a_row4(t, 2u);
        let a3 = a_row4(t, 3u);
        for (var k = lane; k < k4; k += GL) {
            let b = b4[br + k];
            acc[0].x += dot(a4[a0 + k], b);
            if RB > 1u { acc[1].x += dot(a4[a1 + k], b); }
            if RB > 2u { acc[2].x += dot(a4[a2 + k], b); }
            if RB > 3u { acc[3].x += dot(a4[a3 + k], b); }
        }
        gpart[li] = acc[0];
        gpart[256u + li] = acc[1];
        gpart[512u + li] = acc[2];
        gpart[768u + li] = acc[3];
        workgroupBarrier();
        // One invocation per (row, column) adds the 32 lanes' partials.
        if li < RB * GS {
            let r = li / GS;
            let j = li % GS;
            var sum = 0.0;
            for (var l = 0u; l < GL; l++) {
                sum += gpart[256u * r + GL * j + l].x;
            }
            let row = t.m0 + r;
            let c = t.n0 + j;
            if row < p.m && c < p.n {
                put(t.co + row * p.n + c, c, sum);
            }
        }
        return;
    }
    let t = tile_of(tid, RB, 4u * GL);
    let col = t.n0 + 4u * lane;
    let n4 = p.n / 4u;
    let bc = t.off.y / 4u + min(col / 4u, n4 - 1u);
    let a0 = a_row4(t, 0u);
    let a1 = a_row4(t, 1u);
    let a2 = a_row4(t, 2u);
    let a3 = a_row4(t, 3u);
    for (var k = slot; k < k4; k += GS) {
        let q = bc + 4u * k * n4;
        let b0 = b4[q];
        let b1v = b4[q + n4];
        let b2 = b4[q + 2u * n4];
        let b3 = b4[q + 3u * n4];
        acc[0] = fr(acc[0], a4[a0 + k], b0, b1v, b2, b3);
        if RB > 1u { acc[1] = fr(acc[1], a4[a1 + k], b0, b1v, b2, b3); }
        if RB > 2u { acc[2] = fr(acc[2], a4[a2 + k], b0, b1v, b2, b3); }
        if RB > 3u { acc[3] = fr(acc[3], a4[a3 + k], b0, b1v, b2, b3); }
    }
    gpart[li] = acc[0];
    gpart[256u + li] = acc[1];
    gpart[512u + li] = acc[2];
    gpart[768u + li] = acc[3];
    workgroupBarrier();
    // The first slice adds the other slices' partials for its 4 columns, row by row.
    if slot == 0u {
        for (var r = 0u; r < RB; r++) {
            var sum = vec4<f32>(0.0);
            for (var sl = 0u; sl < GS; sl++) {
                sum += gpart[256u * r + GL * sl + lane];
            }
            store4(t.co, t.m0 + r, col, sum);
        }
    }
}

// Split-K epilogue: C[i] = act(sum over slices of the partial products + bias). The partials
// are bound as A: (slices, batch.., M, N); p.total = elements of C; p.slices = slices.
@compute @workgroup_size(256)
fn mm_sum_slices(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let i = flat_id(wid, nwg) * 256u + li;
    if i >= p.total {
        return;
    }
    var acc = 0.0;
    for (var s = 0u; s < p.slices; s++) {
        acc += a1[s * p.total + i];
    }
    put(i, i % p.n, acc);
}
