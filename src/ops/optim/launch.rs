//! Launcher for `shaders/optim.wgsl`: fused SGD / Adam / AdamW updates over many parameter
//! tensors per dispatch (multi-tensor apply), and the two passes of global-norm gradient
//! clipping.

use crate::error::{Error, Result};
use crate::ops::codegen::{self, Wgsl};
use crate::ops::shader;
use crate::runtime::{Access, Device, Shader, Storage, grid_1d};
use crate::wgsl;

pub(crate) const SHADER: Shader = shader("optim", include_str!("../../../shaders/optim.wgsl"));

/// Slots of the checked-in file (`optim.wgsl` as the generator writes it for 8 tensors).
pub(crate) const SLOTS: usize = 8;

/// Parameter tensors one dispatch updates at most, where the adapter's storage-buffer limit
/// allows (Vulkan and DX12 adapters, lavapipe included): one dispatch for a GPT of up to 10
/// layers. The slot table is a uniform of 112 + 64 * 128 bytes.
pub(crate) const MAX_SLOTS: usize = 128;

/// Slots a dispatch can take on `dev`: each binds a parameter and its gradient, besides m, v
/// and aux: 2 under WebGPU's default limit of 8 storage buffers, 14 on Metal's 31 (and
/// lavapipe's), [`MAX_SLOTS`] where the limit is larger.
pub(crate) fn slots_limit(dev: &Device) -> usize {
    let max = dev.info().max_storage_buffers_per_stage as usize;
    (max.saturating_sub(3) / 2).clamp(1, MAX_SLOTS)
}

/// Slots a dispatch takes on `dev` by default: the limit on GPUs, where the branches that pick
/// a slot's binding are uniform and cheap; at most [`SLOTS`] on CPU adapters, which run every
/// branch with its lanes masked, so a wider dispatch costs more per element than the dispatches
/// it saves (lavapipe, the shakespeare GPU preset's 76 tensors, AdamW with clipping: 13
/// dispatches of 14 took 3.3-3.7 s per step, 21 of 8 2.2-2.6 s).
pub(crate) fn slots_for(dev: &Device) -> usize {
    let limit = slots_limit(dev);
    if dev.info().is_cpu {
        limit.min(SLOTS)
    } else {
        limit
    }
}

/// Length of the slot table in the uniform of a module for `slots` slots (a few sizes, so the
/// host struct is one of three types).
fn capacity(slots: usize) -> usize {
    match slots {
        0..=8 => 8,
        9..=32 => 32,
        _ => MAX_SLOTS,
    }
}

/// The module for `slots` slots (a dispatch binds exactly its tensors): `optim.wgsl` with its
/// SLOTS region regenerated.
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
    o.line("// (Generated at run time for each slot count a dispatch binds: up to 2 under WebGPU's default");
    o.line("// limit of 8 storage buffers per stage, up to 128 where the adapter allows.)");
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
    let cap = capacity(n);
    wgsl!(
        o,
        "const SLOT_CAP: u32 = {cap}u; // length of the slot table in the uniform"
    );
    o.blank();
    o.line("// The slot that owns workgroup w: a binary search over the table's wg0 (ascending; unused");
    o.line("// entries hold 0xffffffff and never match). Straight-line on purpose: a loop over uniform");
    o.line(
        "// values makes lavapipe (Mesa 22) specialise and recompile the shader on every dispatch.",
    );
    o.line("fn slot_of(w: u32) -> u32 {");
    o.line("    var s = 0u;");
    let mut step = cap / 2;
    while step > 0 {
        wgsl!(
            o,
            "    if w >= u.slots[s + {step}u].wg0 {{ s += {step}u; }}"
        );
        step /= 2;
    }
    o.line("    return s;");
    o.line("}");
    o.blank();
    o.line("// Binding of slot s: a binary tree of branches on s, as deep as log2(slots) (s is the same");
    o.line("// for a whole workgroup, so each branch is uniform).");
    for (head, leaf) in [
        ("fn load_p(s: u32, j: u32) -> f32 {", "return p{i}[j];"),
        ("fn store_p(s: u32, j: u32, x: f32) {", "p{i}[j] = x;"),
        ("fn load_g(s: u32, j: u32) -> f32 {", "return g{i}[j];"),
    ] {
        o.line(head);
        slot_tree(&mut o, 0, n, 1, leaf);
        o.line("}");
        o.blank();
    }
    o.line(END);
    o.finish()
}

/// Branches on `s` in [lo, hi) down to one `leaf` per slot, at `depth` levels of indent.
fn slot_tree(o: &mut Wgsl, lo: usize, hi: usize, depth: usize, leaf: &str) {
    let pad = "    ".repeat(depth);
    if hi - lo == 1 {
        o.line(&format!("{pad}{}", leaf.replace("{i}", &lo.to_string())));
        return;
    }
    let mid = lo + (hi - lo).div_ceil(2);
    o.line(&format!("{pad}if s < {mid}u {{"));
    slot_tree(o, lo, mid, depth + 1, leaf);
    o.line(&format!("{pad}}} else {{"));
    slot_tree(o, mid, hi, depth + 1, leaf);
    o.line(&format!("{pad}}}"));
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

/// The uniform of a dispatch but its slot table (`Optim` in the WGSL, up to `slots`).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Head {
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
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
    _pad4: u32,
    bc2_back: [f32; BACK],
}
const _: () = assert!(std::mem::size_of::<Head>() == 112);

/// The whole uniform: the head and a slot table of `N` entries.
#[repr(C)]
#[derive(Clone, Copy)]
struct Params<const N: usize> {
    head: Head,
    slots: [SlotParams; N],
}
const _: () = assert!(std::mem::size_of::<Params<MAX_SLOTS>>() == 112 + 64 * MAX_SLOTS);
// SAFETY: repr(C) of a 112-byte Pod head and an array of a 64-byte Pod struct (both multiples
// of 16): no padding for any N, every bit pattern valid, zero a valid value.
unsafe impl<const N: usize> bytemuck::Zeroable for Params<N> {}
unsafe impl<const N: usize> bytemuck::Pod for Params<N> {}

/// Record `entry` of the module for `bound` slots with `head` and the slot `table`.
fn record(
    dev: &Device,
    entry: &str,
    bound: usize,
    head: Head,
    table: &[SlotParams],
    b: &[(&Storage, Access)],
    groups: [u32; 3],
) -> Result<()> {
    fn go<const N: usize>(
        dev: &Device,
        shader: &Shader,
        entry: &str,
        head: Head,
        table: &[SlotParams],
        b: &[(&Storage, Access)],
        groups: [u32; 3],
    ) -> Result<()> {
        // Unused entries never own a workgroup (slot_of's search compares against them).
        let unused = SlotParams {
            wg0: u32::MAX,
            ..SlotParams::default()
        };
        let mut p = Params::<N> {
            head,
            slots: [unused; N],
        };
        p.slots[..table.len()].copy_from_slice(table);
        dev.dispatch(shader, entry, &[], &p, b, groups)
    }
    let shader = shader_for(bound);
    match capacity(bound) {
        8 => go::<8>(dev, shader, entry, head, table, b, groups),
        32 => go::<32>(dev, shader, entry, head, table, b, groups),
        _ => go::<MAX_SLOTS>(dev, shader, entry, head, table, b, groups),
    }
}

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
        decoupled: bool,
    },
}

/// Buffers bound as slot 0 of the finalising passes, which read no parameter (clipping) or
/// only the loss-scale state.
#[derive(Clone, Copy)]
pub(crate) struct Fillers<'a> {
    pub param: &'a Storage,
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

/// The bindings of a dispatch over exactly `slots`.
fn bindings<'a>(slots: &[Slot<'a>], b: &Buffers<'a>) -> Vec<(&'a Storage, Access)> {
    let mut out = Vec::with_capacity(2 * slots.len() + 3);
    // p_i: (len_i) parameter, updated in place
    out.extend(slots.iter().map(|s| (s.param, Access::ReadWrite)));
    // g_i: (len_i) gradient
    out.extend(slots.iter().map(|s| (s.grad, Access::Read)));
    // m, v: (state elements) flat; aux: (3 + partials)
    out.push((b.m, Access::ReadWrite));
    out.push((b.v, Access::ReadWrite));
    out.push((b.aux, Access::ReadWrite));
    out
}

/// Slot table with each slot's first workgroup when a workgroup covers `per_wg` elements, and
/// the workgroups of all.
fn table(dev: &Device, slots: &[Slot<'_>], per_wg: u32) -> Result<(Head, Vec<SlotParams>, u32)> {
    let most = slots_limit(dev);
    if slots.is_empty() || slots.len() > most {
        return Err(Error::InvalidArgument {
            op: "optimizer step",
            message: format!("a dispatch takes 1..={most} tensors, got {}", slots.len()),
        });
    }
    let mut t = Vec::with_capacity(slots.len());
    let mut wg = 0u32;
    for s in slots {
        t.push(SlotParams {
            off: s.off,
            len: s.len,
            wg0: wg,
            _pad0: 0,
            lr: s.lr,
            wd: s.wd,
            step_size: s.step_size,
            decay: s.decay,
            step_back: s.step_back,
        });
        wg = wg
            .checked_add(s.len.div_ceil(per_wg).max(1))
            .ok_or_else(|| Error::Gpu("optimizer step: grid overflows u32".into()))?;
    }
    let head = Head {
        nslots: slots.len() as u32,
        total_wg: wg,
        ..Head::default()
    };
    Ok((head, t, wg))
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
    let (mut p, t_slots, groups) = table(dev, slots, WG)?;
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
            decoupled,
        } => {
            p.bc2_back = bc2_back;
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
    let b = bindings(slots, bufs);
    let grid = grid_1d(u64::from(groups))?;
    record(dev, entry, slots.len(), p, &t_slots, &b, grid)
}

/// Partial sums of squares a [`sumsq`] pass over `lens` writes with `chunk` elements per workgroup.
pub(crate) fn partials(lens: &[u32], chunk: u32) -> u32 {
    lens.iter().map(|l| l.div_ceil(chunk).max(1)).sum()
}

/// Clipping pass 1: partial sums of squares of the slots' gradients into aux[3 + part_base ..].
/// Returns the partials written.
pub(crate) fn sumsq(
    dev: &Device,
    slots: &[Slot<'_>],
    bufs: &Buffers<'_>,
    chunk: u32,
    part_base: u32,
) -> Result<u32> {
    let (mut p, t_slots, groups) = table(dev, slots, chunk)?;
    p.chunk = chunk;
    p.part_base = part_base;
    let b = bindings(slots, bufs);
    let grid = grid_1d(u64::from(groups))?;
    record(dev, "sumsq", slots.len(), p, &t_slots, &b, grid)?;
    Ok(groups)
}

/// Clipping pass 2: norm of all `parts` partials into aux[1], coefficient into aux[0].
pub(crate) fn clip_finalize(
    dev: &Device,
    bufs: &Buffers<'_>,
    parts: u32,
    max_norm: f32,
) -> Result<()> {
    let p = Head {
        part_base: parts,
        max_norm,
        ..Head::default()
    };
    let b = bindings(&[fill_slot(bufs.fill.param, bufs)], bufs);
    record(dev, "clip_finalize", 1, p, &[], &b, [1, 1, 1])
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
    let p = Head {
        part_base: parts,
        max_norm: rule.max_norm,
        beta1: rule.growth_factor,
        beta2: rule.backoff_factor,
        omb2: rule.growth_interval,
        ..Head::default()
    };
    let b = bindings(&[fill_slot(scale, bufs)], bufs);
    record(dev, "scale_finalize", 1, p, &[], &b, [1, 1, 1])
}

/// Slot 0 of a finalising pass: `param` (the loss-scale state, or a placeholder) and a
/// placeholder gradient.
fn fill_slot<'a>(param: &'a Storage, bufs: &Buffers<'a>) -> Slot<'a> {
    Slot {
        param,
        grad: bufs.fill.grad,
        off: 0,
        len: 0,
        lr: 0.0,
        wd: 0.0,
        step_size: 0.0,
        decay: 0.0,
        step_back: [0.0; BACK],
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_generator_reproduces_the_file() {
        assert_eq!(super::source_for(super::SLOTS), super::SHADER.source);
    }
}
