// Unary maps and scalar ops, one invocation per element, plus fill.

const WG: u32 = 256u;

struct Unary {
    n: u32,     // elements
    _pad: u32,
    s: f32,     // scalar operand (add_scalar, mul_scalar, pow, fill)
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Unary;
@group(0) @binding(1) var<storage, read> x: array<f32>;       // (n)
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // (n)

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// GPT-2's tanh approximation. tanh is written via exp of a non-positive argument so large
// inputs saturate instead of overflowing (some backends expand tanh to (e^2x-1)/(e^2x+1)).
fn tanh_stable(v: f32) -> f32 {
    let e = exp(-2.0 * abs(v));
    return sign(v) * (1.0 - e) / (1.0 + e);
}

fn gelu_f(v: f32) -> f32 {
    let k = 0.7978845608028654; // sqrt(2 / pi)
    return 0.5 * v * (1.0 + tanh_stable(k * (v + 0.044715 * v * v * v)));
}

fn sigmoid_f(v: f32) -> f32 {
    // Branch on sign so exp never overflows.
    if v >= 0.0 {
        return 1.0 / (1.0 + exp(-v));
    }
    let e = exp(v);
    return e / (1.0 + e);
}

// NaN test on the bits (`v != v` may be folded away by a driver that assumes no NaNs).
fn is_nan_bits(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn apply(op: u32, v: f32) -> f32 {
    switch op {
        case 0u: { return v + p.s; }          // add_scalar
        case 1u: { return v * p.s; }          // mul_scalar
        case 2u: { return -v; }               // neg
        case 3u: { return exp(v); }           // exp
        case 4u: { return log(v); }           // log
        case 5u: { return sqrt(v); }          // sqrt
        case 6u: {                            // pow by scalar; integer exponents keep negative bases
            if is_nan_bits(v) { return v; }   // NaN stays NaN (lavapipe's pow(NaN, 2) is 0)
            if p.s == round(p.s) {
                let r = pow(abs(v), p.s);
                if v < 0.0 && (i32(p.s) & 1) == 1 { return -r; }
                if v == 0.0 && p.s == 0.0 { return 1.0; }
                return r;
            }
            return pow(v, p.s);
        }
        case 7u: { return max(v, 0.0); }      // relu
        case 8u: { return gelu_f(v); }        // gelu
        case 9u: { return sigmoid_f(v); }     // sigmoid
        case 10u: { return tanh_stable(v); }  // tanh
        default: { return v; }
    }
}

fn run(op: u32, wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let i = flat(wid, nwg, lid);
    if i < p.n {
        y[i] = apply(op, x[i]);
    }
}

// Four elements per invocation when n % 4 == 0 (16-byte loads; a quarter of the invocations).
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;       // (n / 4)
@group(0) @binding(2) var<storage, read_write> y4: array<vec4<f32>>; // (n / 4)

fn run4(op: u32, wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let i = flat(wid, nwg, lid);
    if i < p.n / 4u {
        let v = x4[i];
        y4[i] = vec4<f32>(apply(op, v.x), apply(op, v.y), apply(op, v.z), apply(op, v.w));
    }
}

@compute @workgroup_size(WG) fn add_scalar(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run(0u, w, n, l); }
@compute @workgroup_size(WG) fn mul_scalar(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run(1u, w, n, l); }
@compute @workgroup_size(WG) fn neg(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run(2u, w, n, l); }
@compute @workgroup_size(WG) fn exp_(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run(3u, w, n, l); }
@compute @workgroup_size(WG) fn log_(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run(4u, w, n, l); }
@compute @workgroup_size(WG) fn sqrt_(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run(5u, w, n, l); }
@compute @workgroup_size(WG) fn pow_scalar(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run(6u, w, n, l); }
@compute @workgroup_size(WG) fn relu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run(7u, w, n, l); }
@compute @workgroup_size(WG) fn gelu(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run(8u, w, n, l); }
@compute @workgroup_size(WG) fn sigmoid(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run(9u, w, n, l); }
@compute @workgroup_size(WG) fn tanh_(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run(10u, w, n, l); }
@compute @workgroup_size(WG) fn add_scalar4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run4(0u, w, n, l); }
@compute @workgroup_size(WG) fn mul_scalar4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run4(1u, w, n, l); }
@compute @workgroup_size(WG) fn neg4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run4(2u, w, n, l); }
@compute @workgroup_size(WG) fn exp_4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run4(3u, w, n, l); }
@compute @workgroup_size(WG) fn log_4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run4(4u, w, n, l); }
@compute @workgroup_size(WG) fn sqrt_4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run4(5u, w, n, l); }
@compute @workgroup_size(WG) fn pow_scalar4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run4(6u, w, n, l); }
@compute @workgroup_size(WG) fn relu4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run4(7u, w, n, l); }
@compute @workgroup_size(WG) fn gelu4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run4(8u, w, n, l); }
@compute @workgroup_size(WG) fn sigmoid4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run4(9u, w, n, l); }
@compute @workgroup_size(WG) fn tanh_4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { run4(10u, w, n, l); }

// ---- backward: out = g * f'(...) where f' is read from the saved input x or output y ----

@group(0) @binding(1) var<storage, read> bsaved: array<f32>;    // (n) x or y of the forward
@group(0) @binding(2) var<storage, read> bgrad: array<f32>;     // (n) gradient of the output
@group(0) @binding(3) var<storage, read_write> bout: array<f32>; // (n) gradient of the input

fn dgelu(v: f32) -> f32 {
    let k = 0.7978845608028654;
    let t = tanh_stable(k * (v + 0.044715 * v * v * v));
    return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * v * v);
}

fn dapply(op: u32, s: f32, g: f32) -> f32 {
    switch op {
        case 3u: { return g * s; }                 // exp: saved y
        case 4u: { return g / s; }                 // log: saved x
        case 5u: { return g * 0.5 / s; }           // sqrt: saved y
        case 6u: {                                 // pow: saved x
            if p.s == 0.0 { return 0.0; }
            if is_nan_bits(s) { return s; }        // NaN x: NaN gradient
            let e = p.s - 1.0;
            var r: f32;
            if e == round(e) {
                r = pow(abs(s), e);
                if s < 0.0 && (i32(e) & 1) == 1 { r = -r; }
                if s == 0.0 && e == 0.0 { r = 1.0; }
            } else {
                r = pow(s, e);
            }
            return g * p.s * r;
        }
        case 7u: { return select(0.0, g, s > 0.0); }      // relu: saved x
        case 8u: { return g * dgelu(s); }                  // gelu: saved x
        case 9u: { return g * s * (1.0 - s); }             // sigmoid: saved y
        case 10u: { return g * (1.0 - s * s); }            // tanh: saved y
        default: { return g; }
    }
}

fn runb(op: u32, wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let i = flat(wid, nwg, lid);
    if i < p.n {
        bout[i] = dapply(op, bsaved[i], bgrad[i]);
    }
}

@compute @workgroup_size(WG) fn exp_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb(3u, w, n, l); }
@compute @workgroup_size(WG) fn log_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb(4u, w, n, l); }
@compute @workgroup_size(WG) fn sqrt_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb(5u, w, n, l); }
@compute @workgroup_size(WG) fn pow_scalar_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb(6u, w, n, l); }
@compute @workgroup_size(WG) fn relu_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb(7u, w, n, l); }
@compute @workgroup_size(WG) fn gelu_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb(8u, w, n, l); }
@compute @workgroup_size(WG) fn sigmoid_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb(9u, w, n, l); }
@compute @workgroup_size(WG) fn tanh_backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb(10u, w, n, l); }

// Four elements per invocation when n % 4 == 0 (16-byte loads; a quarter of the invocations).
@group(0) @binding(1) var<storage, read> bsaved4: array<vec4<f32>>;     // (n / 4)
@group(0) @binding(2) var<storage, read> bgrad4: array<vec4<f32>>;      // (n / 4)
@group(0) @binding(3) var<storage, read_write> bout4: array<vec4<f32>>; // (n / 4)

fn runb4(op: u32, wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let i = flat(wid, nwg, lid);
    if i < p.n / 4u {
        let s = bsaved4[i];
        let g = bgrad4[i];
        bout4[i] = vec4<f32>(dapply(op, s.x, g.x), dapply(op, s.y, g.y), dapply(op, s.z, g.z), dapply(op, s.w, g.w));
    }
}

@compute @workgroup_size(WG) fn exp_backward4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb4(3u, w, n, l); }
@compute @workgroup_size(WG) fn log_backward4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb4(4u, w, n, l); }
@compute @workgroup_size(WG) fn sqrt_backward4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb4(5u, w, n, l); }
@compute @workgroup_size(WG) fn pow_scalar_backward4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb4(6u, w, n, l); }
@compute @workgroup_size(WG) fn relu_backward4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb4(7u, w, n, l); }
@compute @workgroup_size(WG) fn gelu_backward4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb4(8u, w, n, l); }
@compute @workgroup_size(WG) fn sigmoid_backward4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb4(9u, w, n, l); }
@compute @workgroup_size(WG) fn tanh_backward4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) { runb4(10u, w, n, l); }
