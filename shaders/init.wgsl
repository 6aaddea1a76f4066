// Tensor initialisation on the device: constant fill and counter-based seeded random numbers
// (same seed, same bits on every run; nothing is uploaded from the host).

const WG: u32 = 256u;

struct Init {
    n: u32,      // elements
    seed_lo: u32,
    seed_hi: u32,
    _pad: u32,
    a: f32,      // fill value / uniform low / normal mean
    b: f32,      // uniform high / normal std
    _pad2: vec2<u32>,
}

@group(0) @binding(0) var<uniform> p: Init;
@group(0) @binding(1) var<storage, read_write> y: array<f32>; // (n)

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// PCG hash (Jarzynski & Olano, 2020).
fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// 24 random bits of stream `k` at element `i`, as a float in [0, 1).
fn unit(i: u32, k: u32) -> f32 {
    let h = pcg(pcg(pcg(i ^ pcg(p.seed_lo)) ^ p.seed_hi) + k);
    return f32(h >> 8u) * (1.0 / 16777216.0);
}

@compute @workgroup_size(WG)
fn fill(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat(w, nw, l);
    if i < p.n { y[i] = p.a; }
}

@compute @workgroup_size(WG)
fn rand_uniform(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat(w, nw, l);
    if i < p.n { y[i] = p.a + (p.b - p.a) * unit(i, 0u); }
}

// Box-Muller; u1 in (0, 1] so the log is finite.
@compute @workgroup_size(WG)
fn rand_normal(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat(w, nw, l);
    if i < p.n {
        let u1 = 1.0 - unit(i, 0u);
        let u2 = unit(i, 1u);
        y[i] = p.a + p.b * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
    }
}
