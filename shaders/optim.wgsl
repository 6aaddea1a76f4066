// Fused optimizer updates: SGD (momentum, Nesterov, weight decay), Adam and AdamW, plus the two
// passes of global-norm gradient clipping.
//
// One dispatch covers up to SLOTS parameter tensors. Each tensor keeps its own buffer (so every
// module that holds the tensor sees the update: the kernel writes that storage in place); the
// optimizer state of all of them lives in flat buffers `m` and `v`, tensor `s` at `slots[s].off`.
// The grid is the concatenation of every slot's workgroups: workgroup `w` belongs to the last
// slot whose `wg0 <= w`, so a whole workgroup works on one tensor (the branch in load/store
// picks the same binding for all of it). A model with more than SLOTS tensors takes
// ceil(tensors / SLOTS) dispatches.
//
// On lavapipe (Mesa 22) a loop whose trip count or inner conditions are pure uniform values
// makes the driver specialise and recompile the shader on every dispatch (inlined uniforms), so
// these kernels avoid such loops (slot_of is straight-line; loop bounds carry `+ nwg.z - 1`).
//
// Arithmetic follows PyTorch's single-tensor implementations (torch.optim.SGD / Adam / AdamW and
// torch.nn.utils.clip_grad_norm_) step for step, in f32.

const WG: u32 = 256u;
const SLOTS: u32 = 8u;
override NSLOTS: u32 = 8u; // slots in use by this pipeline (1..=SLOTS)

struct Slot {
    off: u32,    // offset of this tensor in the flat state buffers m, v (elements)
    len: u32,    // elements of this tensor
    wg0: u32,    // first workgroup of this slot in the grid
    _pad0: u32,
    lr: f32,         // learning rate of this step (schedule value x group scale)
    wd: f32,         // weight decay of the tensor's group
    step_size: f32,  // Adam: lr / (1 - beta1^t), computed on the host in f64 as PyTorch does
    decay: f32,      // AdamW: 1 - lr * wd, computed on the host in f64
}

struct Optim {
    nslots: u32,     // slots in use
    total_wg: u32,   // workgroups of all slots together
    clip: u32,       // 1: gradients are multiplied by aux[0] (the clip coefficient)
    first: u32,      // SGD: 1 on the first step (the momentum buffer starts as the gradient)
    beta1: f32,      // Adam beta1; SGD momentum
    omb1: f32,       // Adam: 1 - beta1; SGD: 1 - dampening (host f64, as PyTorch's Python floats)
    beta2: f32,      // Adam beta2
    omb2: f32,       // Adam: 1 - beta2
    eps: f32,        // Adam epsilon
    bc2_sqrt: f32,   // Adam: sqrt(1 - beta2^t)
    nesterov: u32,   // SGD: 1 for Nesterov momentum
    decoupled: u32,  // 1: AdamW (decay the weights), 0: Adam (L2 added to the gradient)
    chunk: u32,      // sumsq: gradient elements per workgroup (a multiple of WG)
    part_base: u32,  // sumsq: index of this dispatch's first partial sum; finalize: partial count
    max_norm: f32,   // clip_finalize: the norm to clip to
    _pad: u32,
    slots: array<Slot, 8>,
}

@group(0) @binding(0) var<uniform> u: Optim;
var<workgroup> sh: array<f32, WG>;

// BEGIN SLOTS: generated for fewer slots by src/ops/optim/launch.rs (WebGPU's default limit is
// 8 storage buffers per stage: 2 slots there); keep this region in that generator's form.
@group(0) @binding(1) var<storage, read_write> p0: array<f32>; // (slots[0].len) parameter, updated in place
@group(0) @binding(2) var<storage, read_write> p1: array<f32>; // (slots[1].len) parameter, updated in place
@group(0) @binding(3) var<storage, read_write> p2: array<f32>; // (slots[2].len) parameter, updated in place
@group(0) @binding(4) var<storage, read_write> p3: array<f32>; // (slots[3].len) parameter, updated in place
@group(0) @binding(5) var<storage, read_write> p4: array<f32>; // (slots[4].len) parameter, updated in place
@group(0) @binding(6) var<storage, read_write> p5: array<f32>; // (slots[5].len) parameter, updated in place
@group(0) @binding(7) var<storage, read_write> p6: array<f32>; // (slots[6].len) parameter, updated in place
@group(0) @binding(8) var<storage, read_write> p7: array<f32>; // (slots[7].len) parameter, updated in place
@group(0) @binding(9) var<storage, read> g0: array<f32>; // (slots[0].len) gradient of p0
@group(0) @binding(10) var<storage, read> g1: array<f32>; // (slots[1].len) gradient of p1
@group(0) @binding(11) var<storage, read> g2: array<f32>; // (slots[2].len) gradient of p2
@group(0) @binding(12) var<storage, read> g3: array<f32>; // (slots[3].len) gradient of p3
@group(0) @binding(13) var<storage, read> g4: array<f32>; // (slots[4].len) gradient of p4
@group(0) @binding(14) var<storage, read> g5: array<f32>; // (slots[5].len) gradient of p5
@group(0) @binding(15) var<storage, read> g6: array<f32>; // (slots[6].len) gradient of p6
@group(0) @binding(16) var<storage, read> g7: array<f32>; // (slots[7].len) gradient of p7
@group(0) @binding(17) var<storage, read_write> m: array<f32>; // (state elements) Adam exp_avg / SGD momentum, flat
@group(0) @binding(18) var<storage, read_write> v: array<f32>; // (state elements) Adam exp_avg_sq, flat
@group(0) @binding(19) var<storage, read_write> aux: array<f32>; // (2 + partials): clip coefficient, norm, partial sums

// Binding of slot s. With NSLOTS = k the k-th test is constant true, so the chain is k long
// (CPU adapters run every branch of a chain with lanes masked: shorter is faster).
fn load_p(s: u32, j: u32) -> f32 {
    if NSLOTS == 1u || s == 0u { return p0[j]; }
    if NSLOTS == 2u || s == 1u { return p1[j]; }
    if NSLOTS == 3u || s == 2u { return p2[j]; }
    if NSLOTS == 4u || s == 3u { return p3[j]; }
    if NSLOTS == 5u || s == 4u { return p4[j]; }
    if NSLOTS == 6u || s == 5u { return p5[j]; }
    if NSLOTS == 7u || s == 6u { return p6[j]; }
    return p7[j];
}

fn store_p(s: u32, j: u32, x: f32) {
    if NSLOTS == 1u || s == 0u { p0[j] = x; return; }
    if NSLOTS == 2u || s == 1u { p1[j] = x; return; }
    if NSLOTS == 3u || s == 2u { p2[j] = x; return; }
    if NSLOTS == 4u || s == 3u { p3[j] = x; return; }
    if NSLOTS == 5u || s == 4u { p4[j] = x; return; }
    if NSLOTS == 6u || s == 5u { p5[j] = x; return; }
    if NSLOTS == 7u || s == 6u { p6[j] = x; return; }
    p7[j] = x;
}

fn load_g(s: u32, j: u32) -> f32 {
    if NSLOTS == 1u || s == 0u { return g0[j]; }
    if NSLOTS == 2u || s == 1u { return g1[j]; }
    if NSLOTS == 3u || s == 2u { return g2[j]; }
    if NSLOTS == 4u || s == 3u { return g3[j]; }
    if NSLOTS == 5u || s == 4u { return g4[j]; }
    if NSLOTS == 6u || s == 5u { return g5[j]; }
    if NSLOTS == 7u || s == 6u { return g6[j]; }
    return g7[j];
}

// END SLOTS

// The slot that owns workgroup w (slots are laid out in ascending wg0).
fn slot_of(w: u32) -> u32 {
    // Straight-line on purpose: a loop over uniform values makes lavapipe (Mesa 22) specialise
    // and recompile the shader on every dispatch (inline uniforms); unused slots have
    // wg0 = 0xffffffff, so they never match.
    var s = 0u;
    if NSLOTS > 1u && w >= u.slots[1].wg0 { s = 1u; }
    if NSLOTS > 2u && w >= u.slots[2].wg0 { s = 2u; }
    if NSLOTS > 3u && w >= u.slots[3].wg0 { s = 3u; }
    if NSLOTS > 4u && w >= u.slots[4].wg0 { s = 4u; }
    if NSLOTS > 5u && w >= u.slots[5].wg0 { s = 5u; }
    if NSLOTS > 6u && w >= u.slots[6].wg0 { s = 6u; }
    if NSLOTS > 7u && w >= u.slots[7].wg0 { s = 7u; }
    return s;
}

fn wg_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// The gradient after clipping.
fn grad(s: u32, j: u32) -> f32 {
    let g = load_g(s, j);
    if u.clip != 0u { return g * aux[0]; }
    return g;
}

fn adam_elem(s: u32, sl: Slot, j: u32) {
    let k = sl.off + j;
    var g = grad(s, j);
    var p = load_p(s, j);
    if u.decoupled != 0u {
        p = p * sl.decay;                  // AdamW: param.mul_(1 - lr * wd)
    } else {
        g = g + sl.wd * p;                 // Adam: grad.add(param, alpha=wd)
    }
    let m0 = m[k];
    let mk = m0 + u.omb1 * (g - m0);       // exp_avg.lerp_(grad, 1 - beta1)
    let vk = v[k] * u.beta2 + (u.omb2 * g) * g; // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
    m[k] = mk;
    v[k] = vk;
    let denom = sqrt(vk) / u.bc2_sqrt + u.eps;
    store_p(s, j, p + (-sl.step_size * mk) / denom); // param.addcdiv_(exp_avg, denom, -step_size)
}

fn sgd_elem(s: u32, sl: Slot, j: u32) {
    let p = load_p(s, j);
    var d = grad(s, j) + sl.wd * p;        // d_p.add(param, alpha=wd)
    if u.beta1 != 0.0 {
        let k = sl.off + j;
        var b = d;
        if u.first == 0u { b = m[k] * u.beta1 + u.omb1 * d; } // buf.mul_(momentum).add_(d_p, 1 - dampening)
        m[k] = b;
        if u.nesterov != 0u { d = d + u.beta1 * b; } else { d = b; }
    }
    store_p(s, j, p + (-sl.lr) * d);       // param.add_(d_p, alpha=-lr)
}

// One invocation per element. (No loops over uniform values in these kernels: see slot_of.)
@compute @workgroup_size(WG)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let w = wg_index(wid, nwg);
    if w >= u.total_wg { return; }
    let s = slot_of(w);
    let sl = u.slots[s];
    let j = (w - sl.wg0) * WG + lid;
    if j < sl.len { adam_elem(s, sl, j); }
}

@compute @workgroup_size(WG)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let w = wg_index(wid, nwg);
    if w >= u.total_wg { return; }
    let s = slot_of(w);
    let sl = u.slots[s];
    let j = (w - sl.wg0) * WG + lid;
    if j < sl.len { sgd_elem(s, sl, j); }
}

// Clipping, pass 1: each workgroup sums the squares of `chunk` gradient elements of one slot.
@compute @workgroup_size(WG)
fn sumsq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let w = wg_index(wid, nwg);
    if w >= u.total_wg { return; } // workgroup-uniform: the barriers below stay in uniform control flow
    let s = slot_of(w);
    let sl = u.slots[s];
    let start = (w - sl.wg0) * u.chunk;
    // `+ nwg.z - 1` (always + 0: the grid is 2-D) keeps the loop bound from being a pure
    // uniform value, which lavapipe (Mesa 22) would specialise and recompile per dispatch.
    let end = min(sl.len, start + u.chunk) + nwg.z - 1u;
    var acc = 0.0;
    for (var j = start + lid; j < end; j += WG) {
        let g = load_g(s, j);
        acc += g * g;
    }
    sh[lid] = acc;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if lid < h { sh[lid] += sh[lid + h]; }
        workgroupBarrier();
    }
    if lid == 0u { aux[2u + u.part_base + w] = sh[0]; }
}

// Clipping, pass 2 (one workgroup): the global norm and the coefficient min(1, max / (norm + 1e-6)).
@compute @workgroup_size(WG)
fn clip_finalize(@builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    let parts = u.part_base + nwg.z - 1u; // not a pure uniform: see sumsq
    for (var i = lid; i < parts; i += WG) {
        acc += aux[2u + i];
    }
    sh[lid] = acc;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if lid < h { sh[lid] += sh[lid + h]; }
        workgroupBarrier();
    }
    if lid == 0u {
        let norm = sqrt(sh[0]);
        aux[1] = norm;
        aux[0] = min(1.0, u.max_norm / (norm + 1e-6));
    }
}
