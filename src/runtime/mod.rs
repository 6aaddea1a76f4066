//! The runtime: adapter choice and device opening (`adapter`), the recorded command batch
//! (`batch`), the shader registry and pipeline cache (`pipeline`), the buffer pool (`pool`)
//! and readback (`readback`). Everything above this layer records work through
//! [`Device::dispatch`].

mod adapter;
mod batch;
mod pipeline;
mod pool;
mod readback;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
pub use adapter::{CooperativeMatrix, DeviceInfo, DeviceOptions};
pub use batch::Stats;
pub(crate) use batch::uncounted;
pub(crate) use pipeline::Shader;
pub(crate) use pool::BufKind;
use pool::{FreeBuf, Pool, size_class};

/// Workgroups per dimension that every adapter accepts; larger 1-D grids fold into 2-D.
pub(crate) const MAX_GROUPS_PER_DIM: u32 = 65_535;

/// The module generated at run time for (`family`, `variant`); see [`pipeline::generated`].
pub(crate) fn generated_shader(
    family: &'static str,
    variant: usize,
    source: impl FnOnce() -> String,
) -> &'static Shader {
    pipeline::generated(family, variant, source)
}

/// A custom op's module, interned per (name, source); see [`pipeline::custom`].
pub(crate) fn custom_shader(name: &str, source: &str) -> &'static Shader {
    pipeline::custom(name, source)
}

/// How a kernel uses a bound buffer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Access {
    Read,
    ReadWrite,
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

struct Inner {
    /// Takes the process-wide opening lock before the fields below are destroyed.
    _close_start: adapter::CloseStart,
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: DeviceInfo,
    features: wgpu::Features,
    uniform_align: u64,
    max_batch: u32,
    /// [`DeviceOptions::plan_binding_bytes`] (u64::MAX when unset).
    plan_binding: u64,
    batch: Mutex<batch::Batch>,
    pool: Mutex<Pool>,
    modules: Mutex<pipeline::Modules>,
    pipelines: Mutex<pipeline::Pipelines>,
    layouts: Mutex<std::collections::HashMap<pipeline::LayoutKey, Arc<wgpu::BindGroupLayout>>>,
    errors: Arc<Mutex<Vec<wgpu::Error>>>,
    lost: Arc<Mutex<Option<String>>>,
    /// Serialises `device.poll` and `queue.submit`: wgpu-core 30.0.2 can panic when a wait that
    /// timed out races another thread's maintain (a second wait, or the one inside submit).
    poll: Mutex<()>,
    epoch: AtomicU64,
    next_buf_id: AtomicU64,
    dispatches: AtomicU64,
    submits: AtomicU64,
    readbacks: AtomicU64,
    pipelines_compiled: AtomicU64,
    live_bytes: AtomicU64,
    peak_bytes: AtomicU64,
    /// Gives the opening lock back once everything above is destroyed.
    _close_end: adapter::CloseEnd,
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

impl Device {
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
