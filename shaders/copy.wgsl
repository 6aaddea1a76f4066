// Small helpers of the training loop: keeping per-step scalars (loss, metric) on the device so
// a training step needs no readback, and copying values into an existing tensor in place
// (loading a checkpoint into the parameters a model already holds).

const WG: u32 = 256u;

struct Log {
    index: u32,  // row of the log to write
    n: u32,      // copy: elements
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Log;
@group(0) @binding(1) var<storage, read> a: array<f32>;        // log_pair: (1) first value; copy: (n) source
@group(0) @binding(2) var<storage, read> b: array<f32>;        // log_pair: (1) second value; copy: unused
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // log_pair: (rows, 2) the log; copy: (n) destination

// out[index] = (a[0], b[0]).
@compute @workgroup_size(1)
fn log_pair() {
    out[2u * p.index] = a[0];
    out[2u * p.index + 1u] = b[0];
}

@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = (w.y * nw.x + w.x) * WG + l;
    if i < p.n { out[i] = a[i]; }
}
