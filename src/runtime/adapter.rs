//! Adapter choice and device opening: [`DeviceOptions`], the ranking of adapters, the
//! process-wide serialisation of opening and closing devices, and [`DeviceInfo`].

use std::cell::Cell;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};

use super::batch::Batch;
use super::{Device, Inner, lock};
use crate::error::{Error, Result};

/// How to choose the adapter. Environment variables `PORTAGRAD_ADAPTER` and `PORTAGRAD_BACKEND`
/// override the fields when set.
#[derive(Clone, Debug, Default)]
pub struct DeviceOptions {
    /// Case-insensitive substring the adapter's name must contain.
    pub adapter: Option<String>,
    /// Backend to use: `vulkan`, `metal`, `dx12` or `gl`.
    pub backend: Option<String>,
    /// Submit the batch once this many dispatches are recorded (default 65,536).
    pub max_batch_dispatches: Option<u32>,
    /// Plan work as if no storage binding could exceed this many bytes (default and cap: the
    /// adapter's limit, see [`Device::plan_binding_bytes`]). Where the library can split work,
    /// it splits at this size: a GPT token embedding larger than this is held as row chunks,
    /// and its losses are computed over chunks of positions so no logits tensor exceeds it.
    /// Tensors are still checked against the adapter's real limits only. Lower it to exercise
    /// the split paths with small models, or to keep single buffers small.
    pub plan_binding_bytes: Option<u64>,
    /// Ask for WebGPU's default limits (128 MiB bindings, 16 KiB of workgroup memory, 256
    /// invocations per workgroup, 8 storage buffers per stage, ...) instead of the adapter's
    /// own: what a browser grants without asking. `PORTAGRAD_WEBGPU_LIMITS=1` sets it for every
    /// device of the process; CI runs the whole test suite that way too, to prove every kernel
    /// fits.
    pub webgpu_default_limits: bool,
}

impl DeviceOptions {
    /// Options with every field unset (the default choice).
    pub fn new() -> Self {
        Self::default()
    }
    /// Require an adapter whose name contains `name` (case-insensitive).
    pub fn adapter(mut self, name: impl Into<String>) -> Self {
        self.adapter = Some(name.into());
        self
    }
    /// Require a backend: `vulkan`, `metal`, `dx12` or `gl`.
    pub fn backend(mut self, backend: impl Into<String>) -> Self {
        self.backend = Some(backend.into());
        self
    }
    /// Bound on dispatches per submit.
    pub fn max_batch_dispatches(mut self, n: u32) -> Self {
        self.max_batch_dispatches = Some(n.max(1));
        self
    }
    /// Split work at bindings of `bytes` (see [`plan_binding_bytes`](Self::plan_binding_bytes)).
    pub fn plan_binding_bytes(mut self, bytes: u64) -> Self {
        self.plan_binding_bytes = Some(bytes.max(4));
        self
    }
    /// Request WebGPU's default limits (see
    /// [`webgpu_default_limits`](Self::webgpu_default_limits)).
    pub fn webgpu_default_limits(mut self) -> Self {
        self.webgpu_default_limits = true;
        self
    }
}

/// What the chosen adapter is and the limits that matter for tensor work.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Adapter name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// `Vulkan`, `Metal`, `Dx12`, `Gl`.
    pub backend: String,
    /// Driver name and version.
    pub driver: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `Cpu`, ...
    pub device_type: String,
    /// True for software adapters (lavapipe, WARP, SwiftShader).
    pub is_cpu: bool,
    /// Largest buffer in bytes.
    pub max_buffer_size: u64,
    /// Largest storage binding in bytes (the largest tensor one kernel can address).
    pub max_storage_binding: u64,
    /// Invocations per workgroup.
    pub max_invocations_per_workgroup: u32,
    /// Bytes of workgroup memory.
    pub max_workgroup_storage: u32,
    /// Workgroups per grid dimension.
    pub max_workgroups_per_dim: u32,
    /// Storage buffers one shader stage may bind (WebGPU's default: 8).
    pub max_storage_buffers_per_stage: u32,
    /// Subgroup size range when the SUBGROUP feature is available.
    pub subgroup_sizes: Option<(u32, u32)>,
    /// The cooperative-matrix (tensor-core) configurations the adapter lists, when the device
    /// was opened with wgpu's experimental cooperative matrices; empty otherwise.
    pub cooperative_matrices: Vec<CooperativeMatrix>,
}

/// One cooperative-matrix configuration: `C (m x n) += A (m x k) · B (k x n)` per subgroup,
/// A and B of type `ab`, C of type `cr` (`"f16"`, `"f32"`, `"i32"`, `"u32"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CooperativeMatrix {
    /// Rows of A and C.
    pub m: u32,
    /// Columns of B and C.
    pub n: u32,
    /// Columns of A, rows of B.
    pub k: u32,
    /// Element type of A and B.
    pub ab: &'static str,
    /// Element type of C (the accumulator and result).
    pub cr: &'static str,
}

impl DeviceInfo {
    /// The square size (16 or 8) of the configuration the cooperative matmul kernel uses:
    /// f16 operands with f32 accumulators, 16 x 16 x 16 preferred (NVIDIA, AMD on Vulkan)
    /// over 8 x 8 x 8 (Apple's simdgroup matrices). `None` when the adapter lists neither.
    pub fn coop_f16_size(&self) -> Option<u32> {
        coop_f16_size(&self.cooperative_matrices)
    }
}

fn coop_f16_size(list: &[CooperativeMatrix]) -> Option<u32> {
    [16, 8].into_iter().find(|&s| {
        list.iter()
            .any(|c| (c.m, c.n, c.k) == (s, s, s) && c.ab == "f16" && c.cr == "f32")
    })
}

fn scalar_name(t: wgpu::CooperativeScalarType) -> &'static str {
    match t {
        wgpu::CooperativeScalarType::F32 => "f32",
        wgpu::CooperativeScalarType::F16 => "f16",
        wgpu::CooperativeScalarType::I32 => "i32",
        wgpu::CooperativeScalarType::U32 => "u32",
    }
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "adapter: {} | {} | {} | driver {} | max buffer {} MiB, max storage binding {} MiB, {} invocations/workgroup, {} KiB workgroup memory",
            self.name,
            self.backend,
            self.device_type,
            if self.driver.is_empty() {
                "?"
            } else {
                &self.driver
            },
            self.max_buffer_size >> 20,
            self.max_storage_binding >> 20,
            self.max_invocations_per_workgroup,
            self.max_workgroup_storage >> 10,
        )?;
        if let Some((lo, hi)) = self.subgroup_sizes {
            write!(f, ", subgroups {lo}..{hi}")?;
        }
        if let Some(s) = self.coop_f16_size() {
            write!(f, ", cooperative matrices f16 {s}x{s}x{s} -> f32")?;
        }
        Ok(())
    }
}

/// One device opens or closes at a time in this process. On an H100 (Vulkan, driver
/// 580.159.04) a test binary that opened nine devices from nine threads at once hung in about
/// one run in five; run one test at a time it never did. Closing takes the same lock (see
/// [`CloseStart`]), so no device is destroyed while another is being created. Both are rare
/// and slow anyway.
static OPENING: Mutex<bool> = Mutex::new(false);
/// Wakes a thread waiting for [`OPENING`] to turn false.
static OPENED: Condvar = Condvar::new();

thread_local! {
    /// How many holds this thread has on [`OPENING`]: a device dropped by the thread that is
    /// opening one (an error path) must not wait for itself. A flag and a count rather than a
    /// held `MutexGuard`, so a hold can span a struct's field drops and thread-local
    /// destruction order never matters.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

fn enter() {
    if DEPTH.get() == 0 {
        let mut busy = lock(&OPENING);
        while *busy {
            busy = OPENED.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = true;
    }
    DEPTH.set(DEPTH.get() + 1);
}

fn leave() {
    let d = DEPTH.get();
    if d == 0 {
        return; // not held by this thread
    }
    DEPTH.set(d - 1);
    if d == 1 {
        *lock(&OPENING) = false;
        OPENED.notify_one();
    }
}

/// A hold on [`OPENING`] for a scope (released on unwind too).
#[cfg(not(target_arch = "wasm32"))]
struct Serial;

#[cfg(not(target_arch = "wasm32"))]
impl Serial {
    fn enter() -> Serial {
        enter();
        Serial
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Drop for Serial {
    fn drop(&mut self) {
        leave();
    }
}

/// The first field of [`Inner`]: fields drop in declaration order, so this takes the hold
/// before the device's resources and the device itself are destroyed, and [`CloseEnd`], the
/// last field, gives it back after.
pub(super) struct CloseStart;

impl Drop for CloseStart {
    fn drop(&mut self) {
        enter();
    }
}

/// The last field of [`Inner`] (see [`CloseStart`]).
pub(super) struct CloseEnd;

impl Drop for CloseEnd {
    fn drop(&mut self) {
        leave();
    }
}

fn parse_backend(name: &str) -> Result<wgpu::Backends> {
    match name.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
        "metal" | "mtl" => Ok(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
        "gl" | "gles" | "opengl" => Ok(wgpu::Backends::GL),
        other => Err(Error::InvalidArgument {
            op: "Device::new",
            message: format!("unknown backend {other:?}; expected vulkan, metal, dx12 or gl"),
        }),
    }
}

fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl Device {
    /// Open the best adapter: a discrete GPU over an integrated one over a software one.
    /// `PORTAGRAD_ADAPTER` (name substring) and `PORTAGRAD_BACKEND` override the choice.
    pub fn new() -> Result<Device> {
        Self::with_options(DeviceOptions::default())
    }

    /// Open an adapter chosen by `opts` (environment variables still take precedence).
    /// Blocks until the device is ready; in a browser use [`Device::new_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(opts: DeviceOptions) -> Result<Device> {
        let _one_at_a_time = Serial::enter();
        pollster::block_on(Self::open(opts))
    }

    /// In a browser nothing may block: use [`Device::new_async`].
    #[cfg(target_arch = "wasm32")]
    pub fn with_options(_opts: DeviceOptions) -> Result<Device> {
        Err(Error::InvalidArgument {
            op: "Device::with_options",
            message: "a browser cannot block while the GPU opens: use Device::new_async".into(),
        })
    }

    /// Open an adapter chosen by `opts` without blocking: the way to open a device in a
    /// browser (WebGPU), and usable from async code anywhere.
    pub async fn new_async(opts: DeviceOptions) -> Result<Device> {
        Self::open(opts).await
    }

    async fn open(mut opts: DeviceOptions) -> Result<Device> {
        if let Ok(v) = std::env::var("PORTAGRAD_ADAPTER")
            && !v.is_empty()
        {
            opts.adapter = Some(v);
        }
        if let Ok(v) = std::env::var("PORTAGRAD_BACKEND")
            && !v.is_empty()
        {
            opts.backend = Some(v);
        }
        if std::env::var("PORTAGRAD_WEBGPU_LIMITS").is_ok_and(|v| v == "1") {
            opts.webgpu_default_limits = true;
        }
        let backends = match &opts.backend {
            Some(b) => parse_backend(b)?,
            None => wgpu::Backends::PRIMARY,
        };
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapters = Self::adapters(&instance, backends).await;
        let seen: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        let mut candidates: Vec<wgpu::Adapter> = adapters
            .into_iter()
            .filter(|a| {
                let name = a.get_info().name.to_lowercase();
                opts.adapter
                    .as_ref()
                    .is_none_or(|want| name.contains(&want.to_lowercase()))
            })
            .collect();
        candidates.sort_by_key(|a| type_rank(a.get_info().device_type));
        let Some(adapter) = candidates.into_iter().next() else {
            if cfg!(target_arch = "wasm32") {
                return Err(Error::NoWebGpu);
            }
            let mut detail = String::new();
            if let Some(a) = &opts.adapter {
                detail += &format!(" matching adapter name {a:?}");
            }
            if let Some(b) = &opts.backend {
                detail += &format!(" on backend {b}");
            }
            if !seen.is_empty() {
                detail += &format!(" (adapters present: {})", seen.join(", "));
            }
            return Err(Error::NoAdapter { detail });
        };
        Self::from_adapter(adapter, &opts).await
    }

    /// Every adapter of `backends`. WebGPU offers one, on request, instead of a list.
    async fn adapters(instance: &wgpu::Instance, backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
        if cfg!(target_arch = "wasm32") {
            let want = wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            };
            instance.request_adapter(&want).await.into_iter().collect()
        } else {
            instance.enumerate_adapters(backends).await
        }
    }

    async fn from_adapter(adapter: wgpu::Adapter, opts: &DeviceOptions) -> Result<Device> {
        let ai = adapter.get_info();
        // The adapter's real limits, not wgpu's conservative defaults, unless WebGPU's defaults
        // are asked for.
        let limits = if opts.webgpu_default_limits {
            wgpu::Limits::default()
        } else {
            adapter.limits()
        };
        let wanted = wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16;
        let mut features = adapter.features() & wanted;
        // Tensor cores: only where the cooperative matmul kernel can run (it stages f16 tiles
        // in workgroup memory and finds its subgroup through subgroup built-ins) and the
        // adapter lists a configuration it uses. `PORTAGRAD_COOP=0` opens the device without.
        let coop: Vec<CooperativeMatrix> = adapter
            .cooperative_matrix_properties()
            .iter()
            .map(|c| CooperativeMatrix {
                m: c.m_size,
                n: c.n_size,
                k: c.k_size,
                ab: scalar_name(c.ab_type),
                cr: scalar_name(c.cr_type),
            })
            .collect();
        let probe = coop_f16_size(&coop);
        let mut use_coop = probe.is_some()
            && !opts.webgpu_default_limits
            && features.contains(wanted)
            && adapter
                .features()
                .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
            && std::env::var("PORTAGRAD_COOP").map_or(true, |v| v != "0");
        if use_coop {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        let request = |features: wgpu::Features, coop: bool| {
            adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("portagrad"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: if coop {
                    // SAFETY: wgpu asks callers of experimental features to accept that their
                    // implementation may have bugs; only the cooperative matmul kernel uses
                    // them, and it is tested against the f64 reference where it runs.
                    unsafe { wgpu::ExperimentalFeatures::enabled() }
                } else {
                    wgpu::ExperimentalFeatures::disabled()
                },
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
        };
        let mut opened = request(features, use_coop).await;
        if opened.is_err() && use_coop {
            // An experimental feature must not cost the device: open it without.
            use_coop = false;
            features.remove(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
            opened = request(features, false).await;
        }
        let (device, queue) = opened.map_err(|e| Error::RequestDevice {
            adapter: ai.name.clone(),
            message: e.to_string(),
        })?;

        let errors: Arc<Mutex<Vec<wgpu::Error>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e| lock(&sink).push(e)));
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *lock(&lost_sink) = Some(format!("{reason:?}: {msg}"));
        });

        let subgroup_sizes = features
            .contains(wgpu::Features::SUBGROUP)
            .then_some((ai.subgroup_min_size, ai.subgroup_max_size));
        let info = DeviceInfo {
            // Browsers keep the adapter's name to themselves.
            name: if ai.name.is_empty() {
                format!("unnamed {:?} adapter", ai.backend)
            } else {
                ai.name.clone()
            },
            backend: format!("{:?}", ai.backend),
            driver: format!("{} {}", ai.driver, ai.driver_info)
                .trim()
                .to_string(),
            device_type: format!("{:?}", ai.device_type),
            is_cpu: ai.device_type == wgpu::DeviceType::Cpu,
            max_buffer_size: limits.max_buffer_size,
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            subgroup_sizes,
            cooperative_matrices: if use_coop { coop } else { Vec::new() },
        };
        Ok(Device {
            inner: Arc::new(Inner {
                _close_start: CloseStart,
                device,
                queue,
                info,
                features,
                uniform_align: u64::from(limits.min_uniform_buffer_offset_alignment).max(16),
                max_batch: opts.max_batch_dispatches.unwrap_or(65_536),
                plan_binding: opts.plan_binding_bytes.unwrap_or(u64::MAX).max(4),
                batch: Mutex::new(Batch {
                    encoder: None,
                    pass: None,
                    dispatches: 0,
                    uniforms: Vec::new(),
                    chunks: Vec::new(),
                }),
                pool: Mutex::default(),
                modules: Mutex::default(),
                pipelines: Mutex::default(),
                layouts: Mutex::default(),
                errors,
                lost,
                poll: Mutex::new(()),
                epoch: AtomicU64::new(1),
                next_buf_id: AtomicU64::new(1),
                dispatches: AtomicU64::new(0),
                submits: AtomicU64::new(0),
                readbacks: AtomicU64::new(0),
                pipelines_compiled: AtomicU64::new(0),
                live_bytes: AtomicU64::new(0),
                peak_bytes: AtomicU64::new(0),
                _close_end: CloseEnd,
            }),
        })
    }
}
