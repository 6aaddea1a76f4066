// Reductions over the last axis of a (rows, cols) view: sum (scaled, so mean is sum * 1/cols)
// and max. Reducing over all elements runs this twice: rows of a chunked view first, then the
// partials. Two forms (chosen per adapter and row length in src/ops/rows.rs):
// - one workgroup per row, strided loads, a tree in workgroup memory (GPUs, long rows);
// - `*_inv`: one invocation per row looping over its columns, WG_ROWS rows per workgroup; no
//   workgroup memory and no barriers (CPU adapters). Loop bounds derive from the row's first
//   index, not from uniforms alone (lavapipe specialises shaders on such uniforms).
// The one-subgroup-per-row form is in reduce_subgroup.wgsl.

const WG: u32 = 256u;
const WG_ROWS: u32 = 64u;

struct Reduce {
    rows: u32,
    cols: u32,
    n: u32,      // valid elements of x (the last chunk of a chunked view may be short)
    scale: f32,  // multiplies the result (1/cols for mean)
}

@group(0) @binding(0) var<uniform> p: Reduce;
@group(0) @binding(1) var<storage, read> x: array<f32>;       // (rows, cols)
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // (rows)

var<workgroup> sh: array<f32, WG>;

fn row_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

@compute @workgroup_size(WG)
fn sum_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wid, nwg);
    if r >= p.rows { return; }
    let base = r * p.cols;
    var acc = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let i = base + c;
        if i < p.n { acc += x[i]; }
    }
    sh[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s { sh[lid] += sh[lid + s]; }
        workgroupBarrier();
    }
    if lid == 0u { y[r] = sh[0] * p.scale; }
}

@compute @workgroup_size(WG)
fn max_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wid, nwg);
    if r >= p.rows { return; }
    let base = r * p.cols;
    // Start from an element of this row (max is idempotent), so -inf rows stay -inf.
    var acc = x[min(base + min(lid, p.cols - 1u), p.n - 1u)];
    for (var c = lid; c < p.cols; c += WG) {
        let i = base + c;
        if i < p.n { acc = max(acc, x[i]); }
    }
    sh[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s { sh[lid] = max(sh[lid], sh[lid + s]); }
        workgroupBarrier();
    }
    if lid == 0u { y[r] = sh[0]; }
}

// ---- one invocation per row ----

fn row_inv(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG_ROWS + lid;
}

@compute @workgroup_size(WG_ROWS)
fn sum_rows_inv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= p.rows { return; }
    let base = r * p.cols;
    let end = min(base + p.cols, p.n);
    var acc = 0.0;
    for (var i = base; i < end; i++) { acc += x[i]; }
    y[r] = acc * p.scale;
}

@compute @workgroup_size(WG_ROWS)
fn max_rows_inv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_inv(wid, nwg, lid);
    if r >= p.rows { return; }
    let base = r * p.cols;
    let end = min(base + p.cols, p.n);
    var acc = x[min(base, p.n - 1u)];
    for (var i = base + 1u; i < end; i++) { acc = max(acc, x[i]); }
    y[r] = acc;
}

// ---- sum_to: reduce a broadcast gradient back to an operand's shape ----
// Output element j sums the gradient over the broadcast dims, in a fixed order (deterministic).
// The reduced range is cut into chunks of at most `chunk` terms, one invocation per
// (chunk, output), writing partial sums (chunks, n_out); llvmpipe ends any loop after 65,535
// iterations.

struct SumTo {
    n_out: u32,   // elements of the reduced shape
    n_red: u32,   // elements summed into each output
    n_keep: u32,  // number of kept dims
    n_dims_red: u32, // number of reduced dims
    chunk: u32,   // terms per chunk
    n_chunks: u32,
    _pad1: u32,
    _pad2: u32,
    keep_size: array<vec4<u32>, 2>,   // sizes of kept dims (outer to inner)
    keep_stride: array<vec4<u32>, 2>, // their strides in the gradient
    red_size: array<vec4<u32>, 2>,    // sizes of reduced dims
    red_stride: array<vec4<u32>, 2>,  // their strides in the gradient
}

@group(0) @binding(0) var<uniform> sp: SumTo;
@group(0) @binding(1) var<storage, read> sg: array<f32>;       // gradient, broadcast shape
@group(0) @binding(2) var<storage, read_write> so: array<f32>; // (chunks, n_out) partial sums

fn at(v: array<vec4<u32>, 2>, d: u32) -> u32 {
    return v[d / 4u][d % 4u];
}

@compute @workgroup_size(WG)
fn sum_to(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if i >= sp.n_out * sp.n_chunks { return; }
    let j = i % sp.n_out;
    let chunk = i / sp.n_out;
    var rem = j;
    var base = 0u;
    for (var k = 0u; k < sp.n_keep; k++) {
        let d = sp.n_keep - 1u - k;
        let s = at(sp.keep_size, d);
        base += (rem % s) * at(sp.keep_stride, d);
        rem /= s;
    }
    let r0 = chunk * sp.chunk;
    let r1 = min(r0 + sp.chunk, sp.n_red);
    var acc = 0.0;
    for (var r = r0; r < r1; r++) {
        var rr = r;
        var off = base;
        for (var k = 0u; k < sp.n_dims_red; k++) {
            let d = sp.n_dims_red - 1u - k;
            let s = at(sp.red_size, d);
            off += (rr % s) * at(sp.red_stride, d);
            rr /= s;
        }
        acc += sg[off];
    }
    so[i] = acc;
}

// ---- sum_cols: column sums of a (rows, cols) view (sum_to over leading dims: bias gradients) ----
// Invocation (k, c) sums rows [k * chunk, (k + 1) * chunk) of column c, in order, into
// partials (chunks, cols); neighbouring invocations read neighbouring columns. No index
// arithmetic per term (the general sum_to divides per term), no barriers. The loop bound comes
// from the invocation's chunk, not from uniforms alone.

struct SumCols {
    rows: u32,
    cols: u32,
    chunk: u32,  // rows summed by one invocation
    n: u32,      // invocations: chunks * cols
}

@group(0) @binding(0) var<uniform> cp: SumCols;
@group(0) @binding(1) var<storage, read> cg: array<f32>;        // (rows, cols)
@group(0) @binding(2) var<storage, read_write> co: array<f32>;  // (chunks, cols) partial sums

@compute @workgroup_size(WG)
fn sum_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let o = (wid.y * nwg.x + wid.x) * WG + lid;
    if o >= cp.n { return; }
    let k = o / cp.cols;
    let c = o % cp.cols;
    let r1 = min((k + 1u) * cp.chunk, cp.rows);
    let end = r1 * cp.cols;
    var acc = 0.0;
    for (var i = k * cp.chunk * cp.cols + c; i < end; i += cp.cols) { acc += cg[i]; }
    co[o] = acc;
}

// Same with vec4 loads when cols % 4 == 0: invocation (k, c4) sums columns 4 c4 .. 4 c4 + 3
// (a quarter of the storage accesses; n = chunks * cols / 4).
@group(0) @binding(1) var<storage, read> cg4: array<vec4<f32>>;        // (rows, cols / 4)
@group(0) @binding(2) var<storage, read_write> co4: array<vec4<f32>>;  // (chunks, cols / 4)

@compute @workgroup_size(WG)
fn sum_cols4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let o = (wid.y * nwg.x + wid.x) * WG + lid;
    if o >= cp.n { return; }
    let c4 = cp.cols / 4u;
    let k = o / c4;
    let c = o % c4;
    let r1 = min((k + 1u) * cp.chunk, cp.rows);
    let end = r1 * c4;
    var acc = vec4<f32>(0.0);
    for (var i = k * cp.chunk * c4 + c; i < end; i += c4) { acc += cg4[i]; }
    co4[o] = acc;
}
