//! The runtime: adapter choice, the recorded command batch, the pipeline cache, the buffer pool
//! and readback. Everything above this layer records work through [`Device::dispatch`].

mod pool;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Error, Result};
pub(crate) use pool::BufKind;
use pool::{FreeBuf, Pool, size_class};

/// Workgroups per dimension that every adapter accepts; larger 1-D grids fold into 2-D.
pub(crate) const MAX_GROUPS_PER_DIM: u32 = 65_535;
/// Bytes of one uniform-ring chunk (the WebGPU minimum for a uniform binding).
const UNIFORM_CHUNK: u64 = 64 * 1024;

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
        Ok(())
    }
}

/// Counters of the work the runtime did. Reset with [`Device::reset_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Compute dispatches recorded.
    pub dispatches: u64,
    /// Command buffers submitted to the queue.
    pub submits: u64,
    /// Device-to-host copies waited on.
    pub readbacks: u64,
    /// Compute pipelines compiled (each is compiled once and cached).
    pub pipelines_compiled: u64,
    /// Bytes of buffers held by live tensors (size-class rounded).
    pub live_bytes: u64,
    /// Highest `live_bytes` since the last reset.
    pub peak_bytes: u64,
    /// Bytes kept in the pool for reuse.
    pub pooled_bytes: u64,
}

/// How a kernel uses a bound buffer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Access {
    Read,
    ReadWrite,
}

/// A WGSL source file and its name (one per op family).
pub(crate) struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

/// GPU memory behind a tensor. Returns to the pool when the last tensor using it drops.
pub(crate) struct Storage {
    buf: Option<wgpu::Buffer>,
    id: u64,
    class: u64,
    /// Logical size in bytes (what kernels may address).
    pub bytes: u64,
    dev: Arc<Inner>,
}

impl Storage {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buf
            .as_ref()
            .expect("storage buffer present until drop")
    }
    pub fn same_device(&self, dev: &Device) -> bool {
        Arc::ptr_eq(&self.dev, &dev.inner)
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let epoch = self.dev.epoch.load(Ordering::Relaxed);
            self.dev.live_bytes.fetch_sub(self.class, Ordering::Relaxed);
            let mut pool = lock(&self.dev.pool);
            pool.put(
                BufKind::Storage,
                self.class,
                FreeBuf {
                    buf,
                    id: self.id,
                    freed_epoch: epoch,
                },
            );
        }
    }
}

struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: Arc<wgpu::BindGroupLayout>,
}

/// The pending batch: one encoder and one open compute pass that every op appends to.
struct Batch {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    dispatches: u32,
    /// Host copy of this batch's uniform ring; uploaded just before submit.
    uniforms: Vec<u8>,
    /// Chunks of the ring on the device, reused by every batch (queue order keeps that safe).
    chunks: Vec<wgpu::Buffer>,
}

/// Bind group layouts by (storage access pattern, params size).
type LayoutKey = (Vec<Access>, u64);

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: DeviceInfo,
    features: wgpu::Features,
    uniform_align: u64,
    max_batch: u32,
    /// [`DeviceOptions::plan_binding_bytes`] (u64::MAX when unset).
    plan_binding: u64,
    batch: Mutex<Batch>,
    pool: Mutex<Pool>,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<String, Arc<Pipeline>>>,
    layouts: Mutex<HashMap<LayoutKey, Arc<wgpu::BindGroupLayout>>>,
    errors: Arc<Mutex<Vec<wgpu::Error>>>,
    lost: Arc<Mutex<Option<String>>>,
    /// Serialises `device.poll`: wgpu-core 30 can panic when two threads wait at once and one
    /// times out.
    poll: Mutex<()>,
    epoch: AtomicU64,
    next_buf_id: AtomicU64,
    dispatches: AtomicU64,
    submits: AtomicU64,
    readbacks: AtomicU64,
    pipelines_compiled: AtomicU64,
    live_bytes: AtomicU64,
    peak_bytes: AtomicU64,
}

/// A GPU and everything portagrad keeps for it. Cheap to clone (shared handle); `Send + Sync`.
#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.inner.info.name)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a runtime lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        // One device opens at a time in this process. On an H100 (Vulkan, driver 580.159.04) a
        // test binary that opened nine devices from nine threads at once hung in about one
        // run in five; run one test at a time it never did. Opening is rare and slow anyway.
        static OPENING: Mutex<()> = Mutex::new(());
        let _one_at_a_time = lock(&OPENING);
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
        let features = adapter.features() & wanted;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("portagrad"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice {
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
        };
        Ok(Device {
            inner: Arc::new(Inner {
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
            }),
        })
    }

    /// Name, backend, driver, type and limits of the adapter.
    pub fn info(&self) -> &DeviceInfo {
        &self.inner.info
    }

    /// The largest binding, in bytes, that work is planned for where it can be split: the
    /// adapter's max storage binding and max buffer size, lowered by
    /// [`DeviceOptions::plan_binding_bytes`] when set.
    pub fn plan_binding_bytes(&self) -> u64 {
        let info = &self.inner.info;
        info.max_storage_binding
            .min(info.max_buffer_size)
            .min(self.inner.plan_binding)
    }

    /// Whether the device has subgroup operations (used to pick kernel variants).
    pub fn has_subgroups(&self) -> bool {
        self.inner.features.contains(wgpu::Features::SUBGROUP)
    }

    /// Counters since the last [`reset_stats`](Self::reset_stats).
    pub fn stats(&self) -> Stats {
        let i = &self.inner;
        Stats {
            dispatches: i.dispatches.load(Ordering::Relaxed),
            submits: i.submits.load(Ordering::Relaxed),
            readbacks: i.readbacks.load(Ordering::Relaxed),
            pipelines_compiled: i.pipelines_compiled.load(Ordering::Relaxed),
            live_bytes: i.live_bytes.load(Ordering::Relaxed),
            peak_bytes: i.peak_bytes.load(Ordering::Relaxed),
            pooled_bytes: lock(&i.pool).cached_bytes,
        }
    }

    /// Zero the counters; the peak restarts from the bytes live now.
    pub fn reset_stats(&self) {
        let i = &self.inner;
        for c in [
            &i.dispatches,
            &i.submits,
            &i.readbacks,
            &i.pipelines_compiled,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        i.peak_bytes
            .store(i.live_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Give the pool's cached buffers back to the driver.
    pub fn empty_cache(&self) -> Result<()> {
        self.sync()?;
        lock(&self.inner.pool).clear();
        Ok(())
    }

    /// Submit all recorded work and wait for the GPU to finish it.
    pub fn sync(&self) -> Result<()> {
        let idx = self.flush()?;
        if let Some(idx) = idx {
            self.wait(idx)?;
        }
        Ok(())
    }

    /// Submit recorded work without waiting. Returns the submission, if there was work.
    pub fn flush(&self) -> Result<Option<wgpu::SubmissionIndex>> {
        let mut b = lock(&self.inner.batch);
        self.flush_locked(&mut b)
    }

    fn flush_locked(&self, b: &mut Batch) -> Result<Option<wgpu::SubmissionIndex>> {
        self.check_lost()?;
        b.pass = None;
        let Some(encoder) = b.encoder.take() else {
            return Ok(None);
        };
        // Upload this batch's parameters; queue order puts the write before the commands.
        for (i, chunk) in b.uniforms.chunks(UNIFORM_CHUNK as usize).enumerate() {
            self.inner.queue.write_buffer(&b.chunks[i], 0, chunk);
        }
        b.uniforms.clear();
        b.dispatches = 0;
        let idx = self.inner.queue.submit([encoder.finish()]);
        self.inner.epoch.fetch_add(1, Ordering::Relaxed);
        self.inner.submits.fetch_add(1, Ordering::Relaxed);
        self.take_errors()?;
        Ok(Some(idx))
    }

    fn wait(&self, idx: wgpu::SubmissionIndex) -> Result<()> {
        loop {
            // A bounded wait, so a lost device is noticed instead of blocking forever.
            let polled = {
                let _one_at_a_time = lock(&self.inner.poll);
                self.inner.device.poll(wgpu::PollType::Wait {
                    submission_index: Some(idx.clone()),
                    timeout: Some(Duration::from_millis(500)),
                })
            };
            match polled {
                Ok(_) => return self.take_errors(),
                Err(wgpu::PollError::Timeout) => self.check_lost()?,
                Err(e) => return Err(Error::DeviceLost(e.to_string())),
            }
        }
    }

    fn check_lost(&self) -> Result<()> {
        match lock(&self.inner.lost).clone() {
            Some(msg) => Err(Error::DeviceLost(msg)),
            None => Ok(()),
        }
    }

    /// Turn errors wgpu reported since the last check into our error.
    fn take_errors(&self) -> Result<()> {
        let mut errs = lock(&self.inner.errors);
        if errs.is_empty() {
            return Ok(());
        }
        let e = errs.remove(0);
        errs.clear();
        drop(errs);
        self.check_lost()?;
        Err(match e {
            wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory(e.to_string()),
            other => Error::Gpu(other.to_string()),
        })
    }

    /// Check a request against the adapter's limits before wgpu sees it.
    pub(crate) fn check_size(&self, op: &'static str, shape: &[usize], bytes: u64) -> Result<()> {
        let info = &self.inner.info;
        let (limit, which) = if info.max_storage_binding < info.max_buffer_size {
            (info.max_storage_binding, "max storage binding")
        } else {
            (info.max_buffer_size, "max buffer size")
        };
        if bytes > limit {
            return Err(Error::TooLarge {
                op,
                shape: shape.to_vec(),
                bytes,
                limit,
                which,
            });
        }
        Ok(())
    }

    /// A storage buffer of at least `bytes`. `upload` asks for one that no pending command uses,
    /// because its contents will be written through the queue ahead of the pending batch.
    pub(crate) fn alloc(&self, bytes: u64, upload: bool) -> Result<Arc<Storage>> {
        let inner = &self.inner;
        let bytes = bytes.max(4);
        let class = size_class(bytes).min(inner.info.max_buffer_size.max(bytes));
        let epoch = inner.epoch.load(Ordering::Relaxed);
        let found = lock(&inner.pool).take(BufKind::Storage, class, upload, epoch);
        let (buf, id) = match found {
            Some(f) => (f.buf, f.id),
            None => {
                let buf = inner.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("portagrad tensor"),
                    size: class,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.take_errors()?;
                (buf, inner.next_buf_id.fetch_add(1, Ordering::Relaxed))
            }
        };
        let live = inner.live_bytes.fetch_add(class, Ordering::Relaxed) + class;
        inner.peak_bytes.fetch_max(live, Ordering::Relaxed);
        Ok(Arc::new(Storage {
            buf: Some(buf),
            id,
            class,
            bytes,
            dev: inner.clone(),
        }))
    }

    /// A storage buffer holding `data`.
    pub(crate) fn upload(&self, data: &[u8]) -> Result<Arc<Storage>> {
        let s = self.alloc(data.len() as u64, true)?;
        if !data.is_empty() {
            self.inner.queue.write_buffer(s.buffer(), 0, data);
        }
        Ok(s)
    }

    /// Copy `bytes` from the start of `src` to the host (submits pending work and waits).
    pub(crate) fn read(&self, src: &Storage, bytes: u64) -> Result<Vec<u8>> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        if cfg!(target_arch = "wasm32") {
            // The map callback runs on the page's event loop, which waiting here would block
            // forever: an error instead of a frozen page.
            return Err(Error::InvalidArgument {
                op: "readback",
                message: "a browser cannot wait for the GPU: use to_vec_async / item_async".into(),
            });
        }
        let (staging, class, idx) = self.start_read(src, bytes)?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging
            .slice(..bytes)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        if let Some(idx) = idx {
            self.wait(idx)?;
        }
        let mapped = loop {
            match rx.try_recv() {
                Ok(r) => break r,
                Err(_) => {
                    self.check_lost()?;
                    let _one_at_a_time = lock(&self.inner.poll);
                    let _ = self.inner.device.poll(wgpu::PollType::Poll);
                    std::thread::yield_now();
                }
            }
        };
        self.finish_read(staging, class, bytes, mapped)
    }

    /// [`read`](Self::read) for async code. In a browser the copy completes while the page's
    /// event loop runs (nothing may block there); native targets wait as `read` does.
    pub(crate) async fn read_async(&self, src: &Storage, bytes: u64) -> Result<Vec<u8>> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.read(src, bytes)
        }
        #[cfg(target_arch = "wasm32")]
        {
            if bytes == 0 {
                return Ok(Vec::new());
            }
            let (staging, class, _) = self.start_read(src, bytes)?;
            let (done, tx) = oneshot::channel();
            staging
                .slice(..bytes)
                .map_async(wgpu::MapMode::Read, move |r| tx.send(r));
            let mapped = done.await;
            self.check_lost()?;
            self.take_errors()?;
            self.finish_read(staging, class, bytes, mapped)
        }
    }

    /// Record the copy of `src` into a staging buffer and submit everything pending.
    fn start_read(
        &self,
        src: &Storage,
        bytes: u64,
    ) -> Result<(wgpu::Buffer, u64, Option<wgpu::SubmissionIndex>)> {
        let inner = &self.inner;
        let class = size_class(bytes);
        let staging = lock(&inner.pool)
            .take(BufKind::Readback, class, false, 0)
            .map(|f| f.buf)
            .unwrap_or_else(|| {
                inner.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("portagrad readback"),
                    size: class,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            });
        let idx = {
            let mut b = lock(&inner.batch);
            b.pass = None;
            let enc = self.encoder(&mut b);
            enc.copy_buffer_to_buffer(src.buffer(), 0, &staging, 0, bytes);
            self.flush_locked(&mut b)?
        };
        Ok((staging, class, idx))
    }

    /// Copy the mapped staging buffer out and return it to the pool.
    fn finish_read(
        &self,
        staging: wgpu::Buffer,
        class: u64,
        bytes: u64,
        mapped: std::result::Result<(), wgpu::BufferAsyncError>,
    ) -> Result<Vec<u8>> {
        mapped.map_err(|e| Error::Gpu(format!("readback map failed: {e}")))?;
        let out = staging
            .slice(..bytes)
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("readback map failed: {e}")))?
            .to_vec();
        staging.unmap();
        self.inner.readbacks.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.pool).put(
            BufKind::Readback,
            class,
            FreeBuf {
                buf: staging,
                id: 0,
                freed_epoch: 0,
            },
        );
        Ok(out)
    }

    fn encoder<'a>(&self, b: &'a mut Batch) -> &'a mut wgpu::CommandEncoder {
        b.encoder.get_or_insert_with(|| {
            self.inner
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("portagrad batch"),
                })
        })
    }

    fn module(&self, shader: &Shader) -> Result<wgpu::ShaderModule> {
        let mut modules = lock(&self.inner.modules);
        if let Some(m) = modules.get(shader.name) {
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
        modules.insert(shader.name, m.clone());
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

    fn pipeline(
        &self,
        shader: &Shader,
        entry: &str,
        constants: &[(&str, f64)],
        access: &[Access],
        params_size: u64,
    ) -> Result<Arc<Pipeline>> {
        use std::fmt::Write;
        let mut key = format!("{}:{entry}:{params_size}", shader.name);
        for (k, v) in constants {
            let _ = write!(key, ":{k}={v}");
        }
        for a in access {
            key.push(if *a == Access::Read { 'r' } else { 'w' });
        }
        if let Some(p) = lock(&self.inner.pipelines).get(&key) {
            return Ok(p.clone());
        }
        let module = self.module(shader)?;
        let layout = self.layout(access, params_size);
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
            .fetch_add(1, Ordering::Relaxed);
        let p = Arc::new(Pipeline { pipeline, layout });
        lock(&self.inner.pipelines).insert(key, p.clone());
        Ok(p)
    }

    /// Record one dispatch of `entry` in `shader` on the pending batch. `params` goes to
    /// binding 0 (uniform), `bindings` to bindings 1.. in order. Submits when the batch is full.
    pub(crate) fn dispatch<P: bytemuck::Pod>(
        &self,
        shader: &Shader,
        entry: &str,
        constants: &[(&str, f64)],
        params: &P,
        bindings: &[(&Storage, Access)],
        groups: [u32; 3],
    ) -> Result<()> {
        if groups.contains(&0) {
            return Ok(());
        }
        let limit = self.inner.info.max_workgroups_per_dim;
        if groups.iter().any(|&g| g > limit) {
            return Err(Error::Gpu(format!(
                "{entry}: grid {groups:?} exceeds {limit} workgroups per dimension"
            )));
        }
        let access: Vec<Access> = bindings.iter().map(|(_, a)| *a).collect();
        let psize = (std::mem::size_of::<P>() as u64).next_multiple_of(16);
        let pipe = self.pipeline(shader, entry, constants, &access, psize)?;
        let inner = &self.inner;
        let mut b = lock(&inner.batch);
        // Place the parameters in the ring; a block never straddles two chunks.
        let mut off = (b.uniforms.len() as u64).next_multiple_of(inner.uniform_align);
        if off / UNIFORM_CHUNK != (off + psize - 1) / UNIFORM_CHUNK {
            off = (off / UNIFORM_CHUNK + 1) * UNIFORM_CHUNK;
        }
        let chunk_i = (off / UNIFORM_CHUNK) as usize;
        b.uniforms.resize(off as usize, 0);
        b.uniforms.extend_from_slice(bytemuck::bytes_of(params));
        b.uniforms.resize((off + psize) as usize, 0);
        while b.chunks.len() <= chunk_i {
            let c = inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("portagrad params"),
                size: UNIFORM_CHUNK,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            b.chunks.push(c);
        }
        let mut entries = Vec::with_capacity(bindings.len() + 1);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &b.chunks[chunk_i],
                offset: 0,
                size: wgpu::BufferSize::new(psize),
            }),
        });
        for (i, (s, _)) in bindings.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: s.buffer(),
                    offset: 0,
                    size: wgpu::BufferSize::new(s.bytes.next_multiple_of(4)),
                }),
            });
        }
        let bg = inner.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipe.layout,
            entries: &entries,
        });
        if b.pass.is_none() {
            let pass = self
                .encoder(&mut b)
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("portagrad ops"),
                    timestamp_writes: None,
                })
                .forget_lifetime();
            b.pass = Some(pass);
        }
        let pass = b.pass.as_mut().expect("pass opened above");
        pass.set_pipeline(&pipe.pipeline);
        pass.set_bind_group(0, &bg, &[(off % UNIFORM_CHUNK) as u32]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        b.dispatches += 1;
        inner.dispatches.fetch_add(1, Ordering::Relaxed);
        if b.dispatches >= inner.max_batch {
            self.flush_locked(&mut b)?;
        }
        Ok(())
    }
}

/// Grid for `n` workgroups in one logical dimension: folded into 2-D past the per-dimension cap.
/// Shaders recover the flat index as `wid.y * num_workgroups.x + wid.x`.
pub(crate) fn grid_1d(n: u64) -> Result<[u32; 3]> {
    let cap = u64::from(MAX_GROUPS_PER_DIM);
    if n <= cap {
        return Ok([n as u32, 1, 1]);
    }
    let y = n.div_ceil(cap);
    if y > cap {
        return Err(Error::Gpu(format!("{n} workgroups exceed a 2-D grid")));
    }
    Ok([n.div_ceil(y) as u32, y as u32, 1])
}

/// A one-value channel whose receiver is a future: the browser's event loop runs the map
/// callback that sends, and wakes the task awaiting the readback.
#[cfg(target_arch = "wasm32")]
mod oneshot {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    type Slot<T> = Arc<Mutex<(Option<T>, Option<Waker>)>>;

    pub struct Receiver<T>(Slot<T>);
    pub struct Sender<T>(Slot<T>);

    pub fn channel<T>() -> (Receiver<T>, Sender<T>) {
        let slot: Slot<T> = Arc::new(Mutex::new((None, None)));
        (Receiver(slot.clone()), Sender(slot))
    }

    impl<T> Sender<T> {
        pub fn send(self, v: T) {
            let waker = {
                let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
                s.0 = Some(v);
                s.1.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    impl<T> Future for Receiver<T> {
        type Output = T;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
            let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            match s.0.take() {
                Some(v) => Poll::Ready(v),
                None => {
                    s.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }
}
