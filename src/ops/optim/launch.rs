//! Launcher for `shaders/optim.wgsl`: fused SGD / Adam / AdamW updates over up to [`SLOTS`]
//! parameter tensors per dispatch, and the two passes of global-norm gradient clipping.

use crate::error::{Error, Result};
use crate::ops::codegen::{self, Wgsl};
use crate::ops::shader;
use crate::runtime::{Access, Device, Shader, Storage, grid_1d};
use crate::wgsl;

pub(crate) const SHADER: Shader = shader("optim", include_str!("../../../shaders/optim.wgsl"));

/// Parameter tensors one dispatch updates at most (`SLOTS` in the WGSL).
pub(crate) const SLOTS: usize = 8;

/// Slots a dispatch can take on `dev`: each binds a parameter and its gradient, besides m, v
/// and aux, so 8 where an adapter allows 19 storage buffers per stage and 2 under WebGPU's
/// default limit of 8.
pub(crate) fn slots_for(dev: &Device) -> usize {
    let max = dev.info().max_storage_buffers_per_stage as usize;
    (max.saturating_sub(3) / 2).clamp(1, SLOTS)
}

/// The module for `slots` slots: `optim.wgsl` with its SLOTS region regenerated (only the
/// bindings a slot count uses, numbered consecutively).
fn shader_for(slots: usize) -> &'static Shader {
    if slots == SLOTS {
        return &SHADER;
    }
    crate::ops::generated_shader("optim_slots", slots, || source_for(slots))
}

/// WGSL of the module for `slots` slots (also for the shader validation test).
pub(crate) fn source_for(slots: usize) -> String {
    codegen::splice(SHADER.source, BEGIN, END, &slot_region(slots))
        .unwrap_or_else(|| unreachable!("optim.wgsl marks its SLOTS region"))
}

/// `shaders/optim.wgsl` as its generator writes it: the checked-in file with the region for
/// [`SLOTS`] slots (the shader test fails when they differ).
pub(crate) fn file_source() -> String {
    source_for(SLOTS)
}

const BEGIN: &str = "// BEGIN SLOTS";
const END: &str = "// END SLOTS";

/// The SLOTS region of `optim.wgsl` for `n` slots (the file holds it for 8).
fn slot_region(n: usize) -> String {
    let mut o = Wgsl::new();
    o.line(&format!(
        "{BEGIN} {}",
        codegen::header("ops::optim::launch::slot_region").trim_start_matches("// ")
    ));
    o.line("// (Also generated at run time for fewer slots: WebGPU's default limit is 8 storage buffers per");
    o.line("// stage, 2 slots there.)");
    for i in 0..n {
        wgsl!(
            o,
            "@group(0) @binding({}) var<storage, read_write> p{i}: array<f32>; // (slots[{i}].len) parameter, updated in place",
            i + 1
        );
    }
    for i in 0..n {
        wgsl!(
            o,
            "@group(0) @binding({}) var<storage, read> g{i}: array<f32>; // (slots[{i}].len) gradient of p{i}",
            n + 1 + i
        );
    }
    wgsl!(
        o,
        "@group(0) @binding({}) var<storage, read_write> m: array<f32>; // (state elements) Adam exp_avg / SGD momentum, flat",
        2 * n + 1
    );
    wgsl!(
        o,
        "@group(0) @binding({}) var<storage, read_write> v: array<f32>; // (state elements) Adam exp_avg_sq, flat",
        2 * n + 2
    );
    wgsl!(
        o,
        "@group(0) @binding({}) var<storage, read_write> aux: array<f32>; // (3 + partials): clip coefficient, norm, skipped steps, partial sums",
        2 * n + 3
    );
    o.blank();
    o.line("// Binding of slot s. With NSLOTS = k the k-th test is constant true, so the chain is k long");
    o.line("// (CPU adapters run every branch of a chain with lanes masked: shorter is faster).");
    for (head, each, last) in [
        (
            "fn load_p(s: u32, j: u32) -> f32 {",
            "return p{i}[j];",
            "    return p{i}[j];",
        ),
        (
            "fn store_p(s: u32, j: u32, x: f32) {",
            "p{i}[j] = x; return;",
            "    p{i}[j] = x;",
        ),
        (
            "fn load_g(s: u32, j: u32) -> f32 {",
            "return g{i}[j];",
            "    return g{i}[j];",
        ),
    ] {
        o.line(head);
        for i in 0..n - 1 {
            let body = each.replace("{i}", &i.to_string());
            wgsl!(o, "    if NSLOTS == {}u || s == {i}u {{ {body} }}", i + 1);
        }
        o.line(&last.replace("{i}", &(n - 1).to_string()));
        o.line("}");
        o.blank();
    }
    o.line(END);
    o.finish()
}
/// Invocations per workgroup (`WG` in the WGSL).
pub(crate) const WG: u32 = 256;

/// Skipped-step counts (loss scaling) for which the host passes Adam's bias-correction constants
/// (`BACK` in the WGSL); past that the kernel computes them in f32.
pub(crate) const BACK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct SlotParams {
    off: u32,
    len: u32,
    wg0: u32,
    _pad0: u32,
    lr: f32,
    wd: f32,
    step_size: f32,
    decay: f32,
    step_back: [f32; BACK],
}
const _: () = assert!(std::mem::size_of::<SlotParams>() == 64);

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    nslots: u32,
    total_wg: u32,
    clip: u32,
    first: u32,
    beta1: f32,
    omb1: f32,
    beta2: f32,
    omb2: f32,
    eps: f32,
    bc2_sqrt: f32,
    nesterov: u32,
    decoupled: u32,
    chunk: u32,
    part_base: u32,
    max_norm: f32,
    t: u32,
    ln_beta1: f32,
    ln_beta2: f32,
    _pad1: u32,
    _pad2: u32,
    bc2_back: [f32; BACK],
    slots: [SlotParams; SLOTS],
}
const _: () = assert!(std::mem::size_of::<Params>() == 112 + 64 * SLOTS);

/// One parameter tensor in a dispatch.
pub(crate) struct Slot<'a> {
    pub param: &'a Storage,
    pub grad: &'a Storage,
    /// Offset of its state in the flat `m` / `v` buffers (elements).
    pub off: u32,
    pub len: u32,
    pub lr: f32,
    pub wd: f32,
    pub step_size: f32,
    pub decay: f32,
    /// Loss scaling: `step_size` when `k` steps were skipped so far (index k < [`BACK`]).
    pub step_back: [f32; BACK],
}

/// The update rule of one step, with every scalar already computed on the host.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rule {
    Sgd {
        momentum: f32,
        one_minus_dampening: f32,
        nesterov: bool,
        first: bool,
    },
    Adam {
        beta1: f32,
        one_minus_beta1: f32,
        beta2: f32,
        one_minus_beta2: f32,
        eps: f32,
        bc2_sqrt: f32,
        /// Loss scaling: `bc2_sqrt` when `k` steps were skipped so far (index k < [`BACK`]).
        bc2_back: [f32; BACK],
        /// ln(beta1), ln(beta2) from the f64 betas, for the kernel's f32 bias corrections.
        ln_beta1: f32,
        ln_beta2: f32,
        decoupled: bool,
    },
}

/// Buffers bound in place of slots a dispatch does not use (the layout has all of them).
#[derive(Clone, Copy)]
pub(crate) struct Fillers<'a> {
    pub param: &'a [&'a Storage; SLOTS],
    pub grad: &'a Storage,
}

/// The buffers every dispatch binds besides the slots' own.
pub(crate) struct Buffers<'a> {
    pub fill: Fillers<'a>,
    /// (state elements) flat first moment / momentum.
    pub m: &'a Storage,
    /// (state elements) flat second moment.
    pub v: &'a Storage,
    /// (3 + partials) clip coefficient, norm, skipped steps (loss scaling), partial sums.
    pub aux: &'a Storage,
}

fn bindings<'a>(n: usize, slots: &[Slot<'a>], b: &Buffers<'a>) -> Vec<(&'a Storage, Access)> {
    let (fill, m, v, aux) = (&b.fill, b.m, b.v, b.aux);
    let mut b = Vec::with_capacity(2 * n + 3);
    for i in 0..n {
        // p_i: (len_i) parameter, updated in place
        b.push((
            slots.get(i).map_or(fill.param[i], |s| s.param),
            Access::ReadWrite,
        ));
    }
    for i in 0..n {
        // g_i: (len_i) gradient
        b.push((slots.get(i).map_or(fill.grad, |s| s.grad), Access::Read));
    }
    // m, v: (state elements) flat; aux: (3 + partials)
    b.push((m, Access::ReadWrite));
    b.push((v, Access::ReadWrite));
    b.push((aux, Access::ReadWrite));
    b
}

/// Slot table with each slot's first workgroup when a workgroup covers `per_wg` elements.
fn table(dev: &Device, slots: &[Slot<'_>], per_wg: u32) -> Result<(Params, u32)> {
    let most = slots_for(dev);
    if slots.is_empty() || slots.len() > most {
        return Err(Error::InvalidArgument {
            op: "optimizer step",
            message: format!("a dispatch takes 1..={most} tensors, got {}", slots.len()),
        });
    }
    let mut p = Params {
        nslots: slots.len() as u32,
        ..Params::default()
    };
    // Unused slots never own a workgroup (the WGSL's slot_of compares against every slot).
    for sl in &mut p.slots {
        sl.wg0 = u32::MAX;
    }
    let mut wg = 0u32;
    for (i, s) in slots.iter().enumerate() {
        p.slots[i] = SlotParams {
            off: s.off,
            len: s.len,
            wg0: wg,
            _pad0: 0,
            lr: s.lr,
            wd: s.wd,
            step_size: s.step_size,
            decay: s.decay,
            step_back: s.step_back,
        };
        wg = wg
            .checked_add(s.len.div_ceil(per_wg).max(1))
            .ok_or_else(|| Error::Gpu("optimizer step: grid overflows u32".into()))?;
    }
    p.total_wg = wg;
    Ok((p, wg))
}

/// How the update kernels treat the gradients.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum GradMode {
    /// As they are.
    Plain,
    /// Multiplied by the clip coefficient in aux[0].
    Clipped,
    /// Loss-scaled: multiplied by aux[0] (unscale and clip), the step skipped on overflow.
    Scaled,
}

/// Record one fused update of `slots` at host step `t` (1, 2, ...).
pub(crate) fn update(
    dev: &Device,
    t: u64,
    rule: Rule,
    slots: &[Slot<'_>],
    bufs: &Buffers<'_>,
    mode: GradMode,
) -> Result<()> {
    let (mut p, groups) = table(dev, slots, WG)?;
    // Past u32 the device count would wrap; a step count that large is not a real run.
    p.t = u32::try_from(t).map_err(|_| Error::InvalidArgument {
        op: "optimizer step",
        message: format!("step {t} is past u32"),
    })?;
    p.clip = match mode {
        GradMode::Plain => 0,
        GradMode::Clipped => 1,
        GradMode::Scaled => 2,
    };
    let entry = match rule {
        Rule::Sgd {
            momentum,
            one_minus_dampening,
            nesterov,
            first,
        } => {
            p.beta1 = momentum;
            p.omb1 = one_minus_dampening;
            p.nesterov = u32::from(nesterov);
            p.first = u32::from(first);
            "sgd"
        }
        Rule::Adam {
            beta1,
            one_minus_beta1,
            beta2,
            one_minus_beta2,
            eps,
            bc2_sqrt,
            bc2_back,
            ln_beta1,
            ln_beta2,
            decoupled,
        } => {
            p.bc2_back = bc2_back;
            p.ln_beta1 = ln_beta1;
            p.ln_beta2 = ln_beta2;
            p.beta1 = beta1;
            p.omb1 = one_minus_beta1;
            p.beta2 = beta2;
            p.omb2 = one_minus_beta2;
            p.eps = eps;
            p.bc2_sqrt = bc2_sqrt;
            p.decoupled = u32::from(decoupled);
            "adam"
        }
    };
    let n = slots_for(dev);
    let b = bindings(n, slots, bufs);
    let nslots = [("NSLOTS", slots.len() as f64)];
    dev.dispatch(
        shader_for(n),
        entry,
        &nslots,
        &p,
        &b,
        grid_1d(u64::from(groups))?,
    )
}

/// Partial sums of squares a [`sumsq`] pass over `lens` writes with `chunk` elements per workgroup.
pub(crate) fn partials(lens: &[u32], chunk: u32) -> u32 {
    lens.iter().map(|l| l.div_ceil(chunk).max(1)).sum()
}

/// Clipping pass 1: partial sums of squares of the slots' gradients into aux[2 + part_base ..].
/// Returns the partials written.
pub(crate) fn sumsq(
    dev: &Device,
    slots: &[Slot<'_>],
    bufs: &Buffers<'_>,
    chunk: u32,
    part_base: u32,
) -> Result<u32> {
    let (mut p, groups) = table(dev, slots, chunk)?;
    p.chunk = chunk;
    p.part_base = part_base;
    let n = slots_for(dev);
    let b = bindings(n, slots, bufs);
    let nslots = [("NSLOTS", slots.len() as f64)];
    dev.dispatch(
        shader_for(n),
        "sumsq",
        &nslots,
        &p,
        &b,
        grid_1d(u64::from(groups))?,
    )?;
    Ok(groups)
}

/// Clipping pass 2: norm of all `parts` partials into aux[1], coefficient into aux[0].
pub(crate) fn clip_finalize(
    dev: &Device,
    bufs: &Buffers<'_>,
    parts: u32,
    max_norm: f32,
) -> Result<()> {
    let p = Params {
        part_base: parts,
        max_norm,
        ..Params::default()
    };
    let n = slots_for(dev);
    let b = bindings(n, &[], bufs);
    dev.dispatch(shader_for(n), "clip_finalize", &[], &p, &b, [1, 1, 1])
}

/// The loss-scaling rule's constants (`torch.amp.GradScaler`'s names).
pub(crate) struct ScaleRule {
    pub max_norm: f32,
    pub growth_factor: f32,
    pub backoff_factor: f32,
    pub growth_interval: f32,
}

/// Loss scaling's pass 2 in place of [`clip_finalize`]: the unscaling (and clipping)
/// coefficient into aux[0], the true norm (not finite on overflow) into aux[1], and the next
/// scale into `scale` (4): scale, clean steps, overflow flag, skipped steps.
pub(crate) fn scale_finalize(
    dev: &Device,
    bufs: &Buffers<'_>,
    parts: u32,
    scale: &Storage,
    rule: &ScaleRule,
) -> Result<()> {
    let p = Params {
        part_base: parts,
        max_norm: rule.max_norm,
        beta1: rule.growth_factor,
        beta2: rule.backoff_factor,
        omb2: rule.growth_interval,
        ..Params::default()
    };
    let n = slots_for(dev);
    let slot = Slot {
        param: scale,
        grad: bufs.fill.grad,
        off: 0,
        len: 4,
        lr: 0.0,
        wd: 0.0,
        step_size: 0.0,
        decay: 0.0,
        step_back: [0.0; BACK],
    };
    let b = bindings(n, std::slice::from_ref(&slot), bufs);
    dev.dispatch(shader_for(n), "scale_finalize", &[], &p, &b, [1, 1, 1])
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_generator_reproduces_the_file() {
        assert_eq!(super::source_for(super::SLOTS), super::SHADER.source);
    }
}
