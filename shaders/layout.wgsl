// Data movement: transpose of the last two axes, gathering rows by u32 ids (embedding lookup),
// and copying a block of columns between row-major matrices (concat / split on the last axis).

const WG: u32 = 256u;

struct Transpose {
    batch: u32,
    rows: u32,   // M: rows of the input matrix
    cols: u32,   // N: columns of the input matrix
    n: u32,      // batch * rows * cols
}

@group(0) @binding(0) var<uniform> tp: Transpose;
@group(0) @binding(1) var<storage, read> tx: array<f32>;       // (batch, M, N)
@group(0) @binding(2) var<storage, read_write> ty: array<f32>; // (batch, N, M)

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// One invocation per output element, so writes are contiguous.
@compute @workgroup_size(WG)
fn transpose(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let o = flat(w, nw, l);
    if o >= tp.n { return; }
    let mn = tp.rows * tp.cols;
    let b = o / mn;
    let rem = o % mn;
    let j = rem / tp.rows; // output row = input column
    let i = rem % tp.rows; // output column = input row
    ty[o] = tx[b * mn + i * tp.cols + j];
}

struct Gather {
    n: u32,      // ids * dim output elements
    dim: u32,    // row length D
    vocab: u32,  // rows in the table V
    offset: u32, // id of the table's first row (a row chunk of a larger table; else 0)
}

@group(0) @binding(0) var<uniform> gp: Gather;
@group(0) @binding(1) var<storage, read> table: array<f32>;     // (V, D)
@group(0) @binding(2) var<storage, read> ids: array<u32>;       // (n / D)
@group(0) @binding(3) var<storage, read_write> gy: array<f32>;  // (n / D, D)

// Ids outside the table give zero rows; ids known on the host are range-checked before dispatch
// unless the table is a row chunk. Ids below the offset wrap past the table.
@compute @workgroup_size(WG)
fn gather_rows(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let o = flat(w, nw, l);
    if o >= gp.n { return; }
    let id = ids[o / gp.dim] - gp.offset;
    var v = 0.0;
    if id < gp.vocab { v = table[id * gp.dim + o % gp.dim]; }
    gy[o] = v;
}

// 16-bit tables (inference with f16 / bf16 weights): two elements per word, element 2i in the
// low half; the gathered rows are f32.
@group(0) @binding(1) var<storage, read> table_h: array<u32>;  // (ceil(V * D / 2)) half pairs

fn half_at(i: u32) -> u32 {
    return (table_h[i / 2u] >> (16u * (i % 2u))) & 0xffffu;
}

override BF16: bool = false; // the table is bf16 (else f16)

fn half_value(h: u32) -> f32 {
    if BF16 { return bitcast<f32>(h << 16u); }
    return unpack2x16float(h).x;
}

@compute @workgroup_size(WG)
fn gather_rows_half(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let o = flat(w, nw, l);
    if o >= gp.n { return; }
    let id = ids[o / gp.dim] - gp.offset;
    var v = 0.0;
    if id < gp.vocab { v = half_value(half_at(id * gp.dim + o % gp.dim)); }
    gy[o] = v;
}

// ---- gather_rows backward: a deterministic scatter-add into the table's gradient ----
// Input: the positions sorted by (id, position), and offsets (V + 1): id v's positions are
// sorted[offsets[v] .. offsets[v + 1]]. The host builds both when it has the ids; for ids
// computed on the GPU, embed_sort_init + embed_bitonic (a bitonic sort: no atomics, no loops)
// and embed_offsets build them on the device. Then two passes, both in a fixed order:
//   embed_segments: the sorted positions are cut into segments at every id change and every
//     multiple of SEG; invocation (k, c) at a segment head sums column c over its segment;
//   embed_rows: invocation (v, c) sums id v's segment sums in order (0 for unused rows).
// No float atomics, and both paths add the same numbers in the same order: the same bits.
// Segments bound every loop: lavapipe silently ends a loop after 65,535 iterations.

const SEG: u32 = 1024u;

struct Embed {
    n: u32,      // positions
    dim: u32,    // row length D
    vocab: u32,  // rows in the table V
    pad_n: u32,  // n rounded up to a power of two (bitonic sort)
    j: u32,      // bitonic: compare distance
    k: u32,      // bitonic: sequence size
    offset: u32, // id of the table's first row (as in Gather)
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> ep: Embed;
@group(0) @binding(1) var<storage, read> eids: array<u32>;   // (n) ids

// Sort key of a position: (row, position); ids outside the table sort last, padding after them.
fn embed_key(p: u32) -> vec2<u32> {
    if p >= ep.n { return vec2<u32>(0xffffffffu, 0xffffffffu); }
    return vec2<u32>(min(eids[p] - ep.offset, ep.vocab), p);
}

fn key_less(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.x < b.x || (a.x == b.x && a.y < b.y);
}

@group(0) @binding(2) var<storage, read_write> bpos: array<u32>;  // (pad_n) positions being sorted

@compute @workgroup_size(WG)
fn embed_sort_init(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat(w, nw, l);
    if i >= ep.pad_n { return; }
    bpos[i] = select(0xffffffffu, i, i < ep.n);
}

// One compare-exchange step (j, k) of the bitonic network over pad_n elements.
@compute @workgroup_size(WG)
fn embed_bitonic(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat(w, nw, l);
    if i >= ep.pad_n { return; }
    let m = i ^ ep.j;
    if m <= i { return; }
    let a = bpos[i];
    let b = bpos[m];
    let ka = embed_key(a);
    let kb = embed_key(b);
    let ascending = (i & ep.k) == 0u;
    if select(key_less(ka, kb), key_less(kb, ka), ascending) {
        bpos[i] = b;
        bpos[m] = a;
    }
}

@group(0) @binding(2) var<storage, read> spos: array<u32>;          // (n) positions sorted by (id, position)
@group(0) @binding(3) var<storage, read_write> boff: array<u32>;    // (V + 1) first sorted index of each id

// off[v] = the first sorted index whose id is >= v (binary search: at most 32 steps).
@compute @workgroup_size(WG)
fn embed_offsets(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let v = flat(w, nw, l);
    if v > ep.vocab { return; }
    var lo = 0u;
    var hi = ep.n;
    while lo < hi {
        let mid = lo + (hi - lo) / 2u;
        if embed_key(spos[mid]).x < v { lo = mid + 1u; } else { hi = mid; }
    }
    boff[v] = lo;
}

@group(0) @binding(3) var<storage, read> sg: array<f32>;            // (n, D) gradient of the gathered rows
@group(0) @binding(4) var<storage, read_write> spart: array<f32>;   // (n, D) segment sums, at segment heads

fn sorted_id(k: u32) -> u32 {
    return embed_key(spos[k]).x;
}

@compute @workgroup_size(WG)
fn embed_segments(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let o = flat(w, nw, l);
    if o >= ep.n * ep.dim { return; }
    let k = o / ep.dim;
    let c = o % ep.dim;
    let id = sorted_id(k);
    if k % SEG != 0u {
        if sorted_id(k - 1u) == id { return; } // not a segment head
    }
    var acc = 0.0;
    var e = k;
    loop {
        acc += sg[spos[e] * ep.dim + c];
        e++;
        if e >= ep.n || e % SEG == 0u { break; }
        if sorted_id(e) != id { break; }
    }
    spart[o] = acc;
}

@group(0) @binding(3) var<storage, read> roff: array<u32>;          // (V + 1) first sorted index of each id
@group(0) @binding(4) var<storage, read> rpart: array<f32>;         // (n, D) segment sums, at segment heads
@group(0) @binding(5) var<storage, read_write> rout: array<f32>;    // (V, D) gradient of the table

@compute @workgroup_size(WG)
fn embed_rows(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let o = flat(w, nw, l);
    if o >= ep.vocab * ep.dim { return; }
    let v = o / ep.dim;
    let c = o % ep.dim;
    let end = roff[v + 1u];
    var acc = 0.0;
    var h = roff[v];
    while h < end {
        acc += rpart[h * ep.dim + c];
        h = (h / SEG + 1u) * SEG;
    }
    rout[o] = acc;
}

// ---- copy_cols: columns src_off .. src_off + width of each row of src into dst_off .. of dst ----
// concat_last writes each part's block of the output; its backward reads each part's block back.

struct CopyCols {
    n: u32,        // rows * width elements copied
    width: u32,    // columns copied per row
    src_cols: u32, // row length of src
    src_off: u32,  // first column read
    dst_cols: u32, // row length of dst
    dst_off: u32,  // first column written
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> cp: CopyCols;
@group(0) @binding(1) var<storage, read> csrc: array<f32>;        // (rows, src_cols)
@group(0) @binding(2) var<storage, read_write> cdst: array<f32>;  // (rows, dst_cols)

@compute @workgroup_size(WG)
fn copy_cols(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let o = flat(w, nw, l);
    if o >= cp.n { return; }
    let r = o / cp.width;
    let j = o % cp.width;
    cdst[r * cp.dst_cols + cp.dst_off + j] = csrc[r * cp.src_cols + cp.src_off + j];
}
