//! The shader registry and the pipeline cache.
//!
//! Every module has a [`ShaderKey`]: a WGSL file of the crate, a module generated at run time
//! (per head size, per slot count, ...) or a custom op's source. Generated and custom modules
//! are interned here, once per process, so every device caches them by the same key. Each
//! device compiles a module once per key and a pipeline once per (key, entry point,
//! constants, binding access, params size); the per-dispatch lookup allocates nothing.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use super::{Access, Device, lock};
use crate::error::Result;

/// What a shader module is. Two modules with the same key are the same source.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum ShaderKey {
    /// A WGSL file of the crate, `shaders/<name>.wgsl`.
    Static(&'static str),
    /// A module generated at run time: its family and the variant (head size, slot count).
    Generated {
        family: &'static str,
        variant: usize,
    },
    /// The `n`-th distinct (name, source) pair registered as a custom op.
    Custom(usize),
}

/// A WGSL module: its key, a name for labels and errors, and its source.
pub(crate) struct Shader {
    pub key: ShaderKey,
    pub name: &'static str,
    pub source: &'static str,
}

impl Shader {
    /// A WGSL file of the crate.
    pub(crate) const fn fixed(name: &'static str, source: &'static str) -> Shader {
        Shader {
            key: ShaderKey::Static(name),
            name,
            source,
        }
    }
}

/// The process-wide interner of run-time modules. At most a few dozen generated modules per
/// process and one per distinct custom source, so leaking them is bounded.
#[derive(Default)]
struct Registry {
    generated: HashMap<(&'static str, usize), &'static Shader>,
    custom: HashMap<(String, String), &'static Shader>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The module generated for (`family`, `variant`): `source` runs the first time only. Looked
/// up on every dispatch that uses one, so a hit allocates nothing.
pub(crate) fn generated(
    family: &'static str,
    variant: usize,
    source: impl FnOnce() -> String,
) -> &'static Shader {
    let mut guard = lock(&REGISTRY);
    let reg = guard.get_or_insert_with(Registry::default);
    if let Some(sh) = reg.generated.get(&(family, variant)) {
        return sh;
    }
    let sh: &'static Shader = Box::leak(Box::new(Shader {
        key: ShaderKey::Generated { family, variant },
        name: leak(format!("{family}_{variant}")),
        source: leak(source()),
    }));
    reg.generated.insert((family, variant), sh);
    sh
}

/// A custom op's module: the first registration of a (name, source) pair keeps both for the
/// process under the unique name `custom:<name>#<k>`; later ones reuse it.
pub(crate) fn custom(name: &str, source: &str) -> &'static Shader {
    let mut guard = lock(&REGISTRY);
    let reg = guard.get_or_insert_with(Registry::default);
    let k = reg.custom.len();
    reg.custom
        .entry((name.to_string(), source.to_string()))
        .or_insert_with(|| {
            Box::leak(Box::new(Shader {
                key: ShaderKey::Custom(k),
                name: leak(format!("custom:{name}#{k}")),
                source: leak(source.to_string()),
            }))
        })
}

pub(super) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: Arc<wgpu::BindGroupLayout>,
}

/// Bind group layouts by (storage access pattern, params size).
pub(super) type LayoutKey = (Vec<Access>, u64);

/// A compiled pipeline's key, owned (built only when a pipeline is compiled).
struct PipeKey {
    shader: ShaderKey,
    entry: String,
    /// (name, value bits): f64 has no `Eq`, its bits do.
    constants: Vec<(String, u64)>,
    access: Vec<Access>,
    params_size: u64,
}

/// The same key, borrowed from a dispatch's arguments.
struct PipeQuery<'a> {
    shader: ShaderKey,
    entry: &'a str,
    constants: &'a [(&'a str, f64)],
    bindings: &'a [(&'a super::Storage, Access)],
    params_size: u64,
}

impl PipeQuery<'_> {
    fn hash(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.shader.hash(&mut h);
        self.entry.hash(&mut h);
        for (k, v) in self.constants {
            k.hash(&mut h);
            v.to_bits().hash(&mut h);
        }
        for (_, a) in self.bindings {
            a.hash(&mut h);
        }
        self.params_size.hash(&mut h);
        h.finish()
    }

    fn matches(&self, k: &PipeKey) -> bool {
        self.shader == k.shader
            && self.entry == k.entry
            && self.params_size == k.params_size
            && self.constants.len() == k.constants.len()
            && self
                .constants
                .iter()
                .zip(&k.constants)
                .all(|((n, v), (kn, kv))| n == kn && v.to_bits() == *kv)
            && self.bindings.len() == k.access.len()
            && self
                .bindings
                .iter()
                .zip(&k.access)
                .all(|((_, a), ka)| a == ka)
    }

    fn to_key(&self) -> PipeKey {
        PipeKey {
            shader: self.shader,
            entry: self.entry.to_string(),
            constants: self
                .constants
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_bits()))
                .collect(),
            access: self.bindings.iter().map(|(_, a)| *a).collect(),
            params_size: self.params_size,
        }
    }
}

/// A device's pipelines, bucketed by the hash of their key (a bucket holds the rare
/// collisions), so a lookup hashes the borrowed arguments instead of building a key.
#[derive(Default)]
pub(super) struct Pipelines(HashMap<u64, Vec<(PipeKey, Arc<Pipeline>)>>);

/// A device's modules by key.
pub(super) type Modules = HashMap<ShaderKey, wgpu::ShaderModule>;

impl Device {
    fn module(&self, shader: &Shader) -> Result<wgpu::ShaderModule> {
        let mut modules = lock(&self.inner.modules);
        if let Some(m) = modules.get(&shader.key) {
            return Ok(m.clone());
        }
        let m = self
            .inner
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader.name),
                source: wgpu::ShaderSource::Wgsl(shader.source.into()),
            });
        self.take_errors()?;
        modules.insert(shader.key, m.clone());
        Ok(m)
    }

    fn layout(&self, access: &[Access], params_size: u64) -> Arc<wgpu::BindGroupLayout> {
        let mut layouts = lock(&self.inner.layouts);
        let key = (access.to_vec(), params_size);
        if let Some(l) = layouts.get(&key) {
            return l.clone();
        }
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: wgpu::BufferSize::new(params_size),
            },
            count: None,
        }];
        for (i, a) in access.iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: *a == Access::Read,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let l = Arc::new(self.inner.device.create_bind_group_layout(
            &wgpu::BindGroupLayoutDescriptor {
                label: None,
                entries: &entries,
            },
        ));
        layouts.insert(key, l.clone());
        l
    }

    /// The pipeline of `entry` in `shader` for these constants, binding access pattern and
    /// params size: compiled on first use, then a lookup that allocates nothing.
    pub(super) fn pipeline(
        &self,
        shader: &Shader,
        entry: &str,
        constants: &[(&str, f64)],
        bindings: &[(&super::Storage, Access)],
        params_size: u64,
    ) -> Result<Arc<Pipeline>> {
        let q = PipeQuery {
            shader: shader.key,
            entry,
            constants,
            bindings,
            params_size,
        };
        let h = q.hash();
        if let Some(bucket) = lock(&self.inner.pipelines).0.get(&h)
            && let Some((_, p)) = bucket.iter().find(|(k, _)| q.matches(k))
        {
            return Ok(p.clone());
        }
        let key = q.to_key();
        let module = self.module(shader)?;
        let layout = self.layout(&key.access, params_size);
        let pl = self
            .inner
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: None,
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline =
            self.inner
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&pl),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                });
        self.take_errors()?;
        self.inner
            .pipelines_compiled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = Arc::new(Pipeline { pipeline, layout });
        lock(&self.inner.pipelines)
            .0
            .entry(h)
            .or_default()
            .push((key, p.clone()));
        Ok(p)
    }
}
