// Data movement: transpose of the last two axes, and gathering rows by u32 ids (embedding lookup).

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
    _pad: u32,
}

@group(0) @binding(0) var<uniform> gp: Gather;
@group(0) @binding(1) var<storage, read> table: array<f32>;     // (V, D)
@group(0) @binding(2) var<storage, read> ids: array<u32>;       // (n / D)
@group(0) @binding(3) var<storage, read_write> gy: array<f32>;  // (n / D, D)

// Ids past the table give zero rows; ids known on the host are range-checked before dispatch.
@compute @workgroup_size(WG)
fn gather_rows(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let o = flat(w, nw, l);
    if o >= gp.n { return; }
    let id = ids[o / gp.dim];
    var v = 0.0;
    if id < gp.vocab { v = table[id * gp.dim + o % gp.dim]; }
    gy[o] = v;
}
