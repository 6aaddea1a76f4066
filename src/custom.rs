//! Custom ops: your own WGSL compute kernels, recorded on the same command batch as the built-in
//! ops and taking part in autograd like them.
//!
//! A [`CustomOp`] is built once from WGSL source, a forward entry point, the number of inputs, a
//! rule for the output shapes and a rule for the dispatch size; optionally a backward, either as
//! more entry points of the same source or as a closure that composes built-in ops. Then
//! [`CustomOp::apply`] records one dispatch per call, with a [`bytemuck::Pod`] parameter struct.
//!
//! # Binding convention
//!
//! Every entry point of the source sees one bind group (group 0), laid out as follows, for an
//! op with `n` inputs and `m` outputs:
//!
//! | binding | what | WGSL declaration |
//! |---|---|---|
//! | 0 | the parameters `P` | `var<uniform> p: Params;` |
//! | 1 ..= n | the inputs | `var<storage, read> x: array<f32>;` |
//! | n+1 ..= n+m | the outputs | `var<storage, read_write> y: array<f32>;` |
//! | n+m+1 | gradient of output 0 (backward only) | `var<storage, read> gy: array<f32>;` |
//! | n+m+2 ..= 2n+m+1 | gradient of each input (backward only) | `var<storage, read_write> gx: array<f32>;` |
//!
//! The forward entry point uses bindings 0 ..= n+m; backward entry points may use all of them
//! (the outputs stay `read_write` there too, so one set of declarations serves every entry
//! point). The WGSL `Params` struct must have the layout of `P` (`#[repr(C)]`, fields of 4 bytes,
//! WGSL's uniform rules); it is bound with its size rounded up to 16 bytes. An entry point need
//! not use every binding.
//!
//! A backward binds `2n + m + 1` storage buffers. WebGPU's default limit is 8 per shader stage
//! (native adapters allow more), so an op meant to run everywhere keeps `2n + m + 1 <= 8`.
//!
//! Outputs are **not** zeroed: buffers come from a pool and hold stale data, so the forward must
//! write every element (or call [`CustomOpBuilder::zeroed_outputs`]). Input gradients *are*
//! zeroed before the backward entry points run, so a backward may accumulate into them.
//!
//! # Dispatch size
//!
//! The grid rule maps the input shapes and the parameters to a workgroup count `[x, y, z]`.
//! [`groups_1d`] covers the common case of one invocation per element: it folds grids wider
//! than 65,535 workgroups into two dimensions, and the shader recovers the flat index as
//! `(wid.y * num_workgroups.x + wid.x) * WG + lid.x`, i.e.
//! `gid.y * num_workgroups.x * WG + gid.x`.
//!
//! # Errors
//!
//! [`CustomOpBuilder::build`] parses and validates the WGSL with naga and checks that the entry
//! points exist and are compute shaders, so bad WGSL is an [`Error::InvalidArgument`] before any
//! GPU work. What only the device can check (a `Params` struct larger than `P`, a binding the
//! convention does not provide, a limit of the adapter) comes back from `apply` (or from the
//! next readback) as [`Error::Gpu`]. Wrong input counts, element types, devices and shapes are
//! errors too; nothing here panics on user input. Device-side errors are collected per device
//! (not per thread), so a test that provokes one on purpose should open a device of its own
//! ([`testing::device`](crate::testing::device)) rather than share one with other tests.
//!
//! # How a custom op reaches the pipeline cache
//!
//! The runtime caches shader modules by a typed key and pipelines by (key, entry point,
//! constants, parameter size, binding access pattern). Custom modules go through the same
//! registry as the crate's generated ones: the first registration of a given (name, source)
//! pair copies both into memory that lives until the process ends (`Box::leak`) under the
//! unique key `ShaderKey::Custom(k)` and the shader name `custom:<name>#<k>`, and later
//! registrations of the same pair reuse it. Registration is a one-time cost per distinct
//! source; two ops with the
//! same name but different sources never share a cached module or pipeline.
//!
//! # Example
//!
//! A squared ReLU, `y = max(x, 0)²`, with its gradient `dx = 2·max(x, 0)·dy` as a second entry
//! point:
//!
//! ```
//! use portagrad::custom::{CustomOp, groups_1d};
//! use portagrad::{Device, Tensor};
//!
//! #[repr(C)]
//! #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
//! struct Params {
//!     n: u32,
//! }
//!
//! const WGSL: &str = r#"
//! struct Params { n: u32 }
//! @group(0) @binding(0) var<uniform> p: Params;
//! @group(0) @binding(1) var<storage, read> x: array<f32>;
//! @group(0) @binding(2) var<storage, read_write> y: array<f32>;
//! @group(0) @binding(3) var<storage, read> gy: array<f32>;
//! @group(0) @binding(4) var<storage, read_write> gx: array<f32>;
//!
//! @compute @workgroup_size(64)
//! fn forward(@builtin(global_invocation_id) gid: vec3<u32>,
//!            @builtin(num_workgroups) nwg: vec3<u32>) {
//!     let i = gid.y * nwg.x * 64u + gid.x;
//!     if (i >= p.n) { return; }
//!     let r = max(x[i], 0.0);
//!     y[i] = r * r;
//! }
//!
//! @compute @workgroup_size(64)
//! fn backward(@builtin(global_invocation_id) gid: vec3<u32>,
//!             @builtin(num_workgroups) nwg: vec3<u32>) {
//!     let i = gid.y * nwg.x * 64u + gid.x;
//!     if (i >= p.n) { return; }
//!     gx[i] = 2.0 * max(x[i], 0.0) * gy[i];
//! }
//! "#;
//!
//! # fn main() -> portagrad::Result<()> {
//! let op = CustomOp::<Params>::builder("squared_relu", WGSL)
//!     .inputs(1)
//!     .forward("forward", |shapes, _| groups_1d(shapes[0].iter().product(), 64))
//!     .backward("backward", |shapes, _| groups_1d(shapes[0].iter().product(), 64))
//!     .build()?;
//!
//! let dev = Device::new()?;
//! let x = Tensor::from_slice(&dev, &[-1.0, 0.5, 2.0], &[3])?.with_grad();
//! let y = op.apply(&[&x], &Params { n: 3 })?;
//! assert_eq!(y.to_vec()?, vec![0.0, 0.25, 4.0]);
//! let grads = y.sum()?.backward()?;
//! assert_eq!(grads.get(&x).unwrap().to_vec()?, vec![0.0, 1.0, 4.0]);
//! # Ok(()) }
//! ```

use std::marker::PhantomData;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::runtime::{Access, Shader, grid_1d};
use crate::tensor::{DType, Tensor};

/// Workgroup count for one invocation per item: `items` invocations in workgroups of
/// `workgroup_size`, folded into a 2-D grid past 65,535 workgroups (see the module docs for the
/// index the shader recovers).
pub fn groups_1d(items: usize, workgroup_size: u32) -> Result<[u32; 3]> {
    if workgroup_size == 0 {
        return Err(Error::InvalidArgument {
            op: "groups_1d",
            message: "workgroup size must be at least 1".into(),
        });
    }
    grid_1d((items as u64).div_ceil(u64::from(workgroup_size)))
}

/// The dispatch-size rule of one entry point: (input shapes, parameters) -> workgroups.
type GridFn<P> = Box<dyn Fn(&[&[usize]], &P) -> Result<[u32; 3]> + Send + Sync>;
/// The output-shape rule: input shapes -> output shapes, or a message saying what is wrong.
type ShapeFn =
    Box<dyn Fn(&[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> + Send + Sync>;
/// A backward written with built-in ops.
type BackwardClosure<P> =
    Box<dyn Fn(&BackwardArgs<'_, P>) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// What a closure backward ([`CustomOpBuilder::backward_with`]) receives.
pub struct BackwardArgs<'a, P> {
    /// The parameters the forward was called with.
    pub params: &'a P,
    /// The forward's inputs (detached).
    pub inputs: &'a [Tensor],
    /// The forward's outputs (detached).
    pub outputs: &'a [Tensor],
    /// Gradient of the loss with respect to output 0.
    pub grad: &'a Tensor,
}

struct Kernel<P> {
    entry: String,
    grid: GridFn<P>,
}

enum Backward<P> {
    None,
    Kernels(Vec<Kernel<P>>),
    Closure(BackwardClosure<P>),
}

struct OpInner<P> {
    name: &'static str,
    shader: &'static Shader,
    inputs: Vec<DType>,
    outputs: Option<ShapeFn>,
    forward: Kernel<P>,
    backward: Backward<P>,
    zeroed_outputs: bool,
}

/// A registered custom op: WGSL kernels with a parameter struct `P`. Cheap to clone; usable
/// from several threads and on several devices (each device compiles its pipelines once).
pub struct CustomOp<P> {
    inner: Arc<OpInner<P>>,
}

impl<P> Clone for CustomOp<P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<P> std::fmt::Debug for CustomOp<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustomOp({})", self.inner.shader.name)
    }
}

/// Builds a [`CustomOp`]; start with [`CustomOp::builder`].
pub struct CustomOpBuilder<P> {
    name: String,
    source: String,
    inputs: Vec<DType>,
    outputs: Option<ShapeFn>,
    forward: Option<Kernel<P>>,
    backward: Backward<P>,
    zeroed_outputs: bool,
    _p: PhantomData<fn(&P)>,
}

/// Parse and validate `source` with naga and check that each entry point is a compute shader.
fn validate(name: &str, source: &str, entries: &[&str]) -> Result<()> {
    let bad = |message: String| Error::InvalidArgument {
        op: "CustomOp::build",
        message: format!("{name}: {message}"),
    };
    let module = naga::front::wgsl::parse_str(source).map_err(|e| {
        bad(format!(
            "WGSL does not parse:\n{}",
            e.emit_to_string(source)
        ))
    })?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| {
        bad(format!(
            "WGSL does not validate:\n{}",
            e.emit_to_string(source)
        ))
    })?;
    for entry in entries {
        match module.entry_points.iter().find(|ep| ep.name == *entry) {
            Some(ep) if ep.stage == naga::ShaderStage::Compute => {}
            Some(_) => return Err(bad(format!("entry point {entry:?} is not @compute"))),
            None => {
                let have: Vec<&str> = module
                    .entry_points
                    .iter()
                    .map(|ep| ep.name.as_str())
                    .collect();
                return Err(bad(format!(
                    "no entry point {entry:?} in the source (entry points: {have:?})"
                )));
            }
        }
    }
    Ok(())
}

impl<P: bytemuck::Pod + Send + Sync> CustomOp<P> {
    /// Start building an op called `name` (used in error messages and pipeline labels) from
    /// WGSL `source`. Defaults: one f32 input, one output of the input's shape, no backward.
    pub fn builder(name: &str, source: &str) -> CustomOpBuilder<P> {
        CustomOpBuilder {
            name: name.to_string(),
            source: source.to_string(),
            inputs: vec![DType::F32],
            outputs: None,
            forward: None,
            backward: Backward::None,
            zeroed_outputs: false,
            _p: PhantomData,
        }
    }

    /// The name the op was registered under.
    pub fn name(&self) -> &str {
        self.inner.name
    }

    /// The unique shader name the runtime caches this op's module and pipelines under.
    pub fn shader_name(&self) -> &'static str {
        self.inner.shader.name
    }

    /// Record the op on `inputs` and return output 0. With more than one output, the others
    /// are computed too (see [`apply_all`](Self::apply_all)).
    pub fn apply(&self, inputs: &[&Tensor], params: &P) -> Result<Tensor> {
        Ok(self.apply_all(inputs, params)?.swap_remove(0))
    }

    /// Record the op on `inputs` and return every output. Autograd follows output 0: when an
    /// input requires a gradient, output 0 records a node whose backward is the op's backward;
    /// the other outputs are plain tensors (useful as values the backward reads).
    pub fn apply_all(&self, inputs: &[&Tensor], params: &P) -> Result<Vec<Tensor>> {
        let op = &*self.inner;
        let name = op.name;
        if inputs.len() != op.inputs.len() {
            return Err(Error::InvalidArgument {
                op: name,
                message: format!("takes {} input(s), got {}", op.inputs.len(), inputs.len()),
            });
        }
        let Some(first) = inputs.first() else {
            return Err(Error::InvalidArgument {
                op: name,
                message: "a custom op needs at least one input (it picks the device)".into(),
            });
        };
        let dev = &first.dev;
        for (t, want) in inputs.iter().zip(&op.inputs) {
            if !t.storage.same_device(dev) {
                return Err(Error::DeviceMismatch { op: name });
            }
            t.expect_dtype(name, *want)?;
        }
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape.as_slice()).collect();
        let out_shapes = match &op.outputs {
            Some(f) => f(&shapes).map_err(|message| Error::Shape { op: name, message })?,
            None => vec![shapes[0].to_vec()],
        };
        if out_shapes.is_empty() {
            return Err(Error::Shape {
                op: name,
                message: "the output-shape rule returned no outputs".into(),
            });
        }
        let outs = out_shapes
            .iter()
            .map(|s| {
                if op.zeroed_outputs {
                    Tensor::zeros(dev, s)
                } else {
                    Tensor::empty(dev, name, s, DType::F32)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let mut bindings: Vec<(&crate::runtime::Storage, Access)> = Vec::new();
        bindings.extend(inputs.iter().map(|t| (&*t.storage, Access::Read)));
        bindings.extend(outs.iter().map(|t| (&*t.storage, Access::ReadWrite)));
        let groups = (op.forward.grid)(&shapes, params)?;
        dispatch(dev, op.shader, &op.forward.entry, params, &bindings, groups).map_err(|e| {
            explain(e, name, &op.forward.entry, || {
                layout_words(inputs.len(), outs.len(), false)
            })
        })?;

        let mut outs = outs;
        if Tensor::should_record(inputs) {
            let saved_in: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
            let saved_out: Vec<Tensor> = outs.iter().map(|t| t.detach()).collect();
            let me = self.inner.clone();
            let params = *params;
            let out0 = outs.remove(0);
            let out0 = out0.record(
                name,
                inputs,
                Box::new(move |g| backward(&me, &params, &saved_in, &saved_out, g)),
            );
            outs.insert(0, out0);
        }
        Ok(outs)
    }
}

fn dispatch<P: bytemuck::Pod>(
    dev: &crate::Device,
    shader: &Shader,
    entry: &str,
    params: &P,
    bindings: &[(&crate::runtime::Storage, Access)],
    groups: [u32; 3],
) -> Result<()> {
    if std::mem::size_of::<P>() == 0 {
        // A zero-sized parameter struct still gets a (zeroed) uniform binding.
        dev.dispatch(shader, entry, &[], &[0u32; 4], bindings, groups)
    } else {
        dev.dispatch(shader, entry, &[], params, bindings, groups)
    }
}

/// The bind group an entry point gets, in words (for error messages).
fn layout_words(inputs: usize, outputs: usize, backward: bool) -> String {
    let span = |first: usize, count: usize| match count {
        1 => first.to_string(),
        _ => format!("{first}..={}", first + count - 1),
    };
    let mut s = format!(
        "0 = params (uniform), {} = inputs (read), {} = outputs (read_write)",
        span(1, inputs),
        span(1 + inputs, outputs)
    );
    if backward {
        let g = 1 + inputs + outputs;
        s += &format!(
            ", {g} = output gradient (read), {} = input gradients (read_write)",
            span(g + 1, inputs)
        );
    }
    s
}

/// Name the op, the entry point and the binding convention in a device-side error.
fn explain(e: Error, name: &str, entry: &str, layout: impl FnOnce() -> String) -> Error {
    match e {
        Error::Gpu(msg) => Error::Gpu(format!(
            "custom op {name}, entry point {entry:?} (bind group 0: {}): {msg}",
            layout()
        )),
        other => other,
    }
}

fn backward<P: bytemuck::Pod + Send + Sync>(
    op: &OpInner<P>,
    params: &P,
    inputs: &[Tensor],
    outputs: &[Tensor],
    g: &Tensor,
) -> Result<Vec<Option<Tensor>>> {
    match &op.backward {
        Backward::None => Err(Error::InvalidArgument {
            op: op.name,
            message: "this custom op has no backward; register one with .backward(..) or \
                      .backward_with(..), or call it on tensors that need no gradient"
                .into(),
        }),
        Backward::Closure(f) => {
            let grads = f(&BackwardArgs {
                params,
                inputs,
                outputs,
                grad: g,
            })?;
            if grads.len() != inputs.len() {
                return Err(Error::InvalidArgument {
                    op: op.name,
                    message: format!(
                        "the backward closure returned {} gradient(s) for {} input(s)",
                        grads.len(),
                        inputs.len()
                    ),
                });
            }
            Ok(grads)
        }
        Backward::Kernels(kernels) => {
            let grads = inputs
                .iter()
                .map(|t| Tensor::zeros(&g.dev, &t.shape))
                .collect::<Result<Vec<_>>>()?;
            let mut bindings: Vec<(&crate::runtime::Storage, Access)> = Vec::new();
            bindings.extend(inputs.iter().map(|t| (&*t.storage, Access::Read)));
            bindings.extend(outputs.iter().map(|t| (&*t.storage, Access::ReadWrite)));
            bindings.push((&*g.storage, Access::Read));
            bindings.extend(grads.iter().map(|t| (&*t.storage, Access::ReadWrite)));
            let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape.as_slice()).collect();
            for k in kernels {
                let groups = (k.grid)(&shapes, params)?;
                dispatch(&g.dev, op.shader, &k.entry, params, &bindings, groups).map_err(|e| {
                    explain(e, op.name, &k.entry, || {
                        layout_words(inputs.len(), outputs.len(), true)
                    })
                })?;
            }
            Ok(grads
                .into_iter()
                .zip(&op.inputs)
                .map(|(t, d)| (*d == DType::F32).then_some(t))
                .collect())
        }
    }
}

impl<P: bytemuck::Pod + Send + Sync> CustomOpBuilder<P> {
    /// The op takes `n` f32 inputs (default 1).
    pub fn inputs(mut self, n: usize) -> Self {
        self.inputs = vec![DType::F32; n];
        self
    }

    /// The op takes inputs of these element types (u32 inputs, e.g. ids, get no gradient).
    pub fn input_dtypes(mut self, dtypes: &[DType]) -> Self {
        self.inputs = dtypes.to_vec();
        self
    }

    /// Output shapes (all f32) from the input shapes; return `Err(message)` for inputs the op
    /// does not accept (it becomes an [`Error::Shape`]). Default: one output shaped like input 0.
    pub fn outputs(
        mut self,
        f: impl Fn(&[&[usize]]) -> std::result::Result<Vec<Vec<usize>>, String> + Send + Sync + 'static,
    ) -> Self {
        self.outputs = Some(Box::new(f));
        self
    }

    /// Zero the outputs before the forward runs (one extra fill dispatch per output), for
    /// kernels that do not write every element.
    pub fn zeroed_outputs(mut self) -> Self {
        self.zeroed_outputs = true;
        self
    }

    /// The forward entry point and its dispatch size: (input shapes, params) -> workgroups.
    pub fn forward(
        mut self,
        entry: &str,
        grid: impl Fn(&[&[usize]], &P) -> Result<[u32; 3]> + Send + Sync + 'static,
    ) -> Self {
        self.forward = Some(Kernel {
            entry: entry.to_string(),
            grid: Box::new(grid),
        });
        self
    }

    /// Add a backward entry point of the same source (call several times for several passes;
    /// they run in order). It sees the bindings of the module docs and writes the input
    /// gradients, which start zeroed.
    pub fn backward(
        mut self,
        entry: &str,
        grid: impl Fn(&[&[usize]], &P) -> Result<[u32; 3]> + Send + Sync + 'static,
    ) -> Self {
        let k = Kernel {
            entry: entry.to_string(),
            grid: Box::new(grid),
        };
        match &mut self.backward {
            Backward::Kernels(v) => v.push(k),
            other => *other = Backward::Kernels(vec![k]),
        }
        self
    }

    /// A backward composed of tensor ops: it returns one gradient per input (`None` for an
    /// input with no gradient), each shaped like its input. Replaces backward entry points.
    pub fn backward_with(
        mut self,
        f: impl Fn(&BackwardArgs<'_, P>) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    ) -> Self {
        self.backward = Backward::Closure(Box::new(f));
        self
    }

    /// Validate the WGSL and register the op (see the module docs for what is checked and how
    /// the source is kept).
    pub fn build(self) -> Result<CustomOp<P>> {
        let Some(forward) = self.forward else {
            return Err(Error::InvalidArgument {
                op: "CustomOp::build",
                message: format!("{}: no forward entry point (call .forward(..))", self.name),
            });
        };
        if self.inputs.is_empty() {
            return Err(Error::InvalidArgument {
                op: "CustomOp::build",
                message: format!("{}: a custom op needs at least one input", self.name),
            });
        }
        let mut entries = vec![forward.entry.as_str()];
        if let Backward::Kernels(ks) = &self.backward {
            entries.extend(ks.iter().map(|k| k.entry.as_str()));
        }
        validate(&self.name, &self.source, &entries)?;
        let shader = crate::runtime::custom_shader(&self.name, &self.source);
        let name: &'static str = shader
            .name
            .strip_prefix("custom:")
            .and_then(|s| s.rsplit_once('#'))
            .map_or(shader.name, |(n, _)| n);
        Ok(CustomOp {
            inner: Arc::new(OpInner {
                name,
                shader,
                inputs: self.inputs,
                outputs: self.outputs,
                forward,
                backward: self.backward,
                zeroed_outputs: self.zeroed_outputs,
            }),
        })
    }
}
