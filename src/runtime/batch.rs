//! The recorded batch: dispatches append to one open compute pass, their parameters to one
//! uniform ring; submit, flush and sync, and the counters in [`Stats`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::pipeline::Shader;
use super::{Access, Device, Storage, lock};
use crate::error::{Error, Result};

thread_local! {
    /// Set while the library measures its own kernels (matmul autotuning): that work is not
    /// the caller's, so it stays out of the dispatch and submit counters.
    static UNCOUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with its dispatches and submits on this thread left out of [`Stats`].
pub(crate) fn uncounted<R>(f: impl FnOnce() -> R) -> R {
    let prev = UNCOUNTED.replace(true);
    let r = f();
    UNCOUNTED.set(prev);
    r
}

/// Bytes of one uniform-ring chunk (the WebGPU minimum for a uniform binding).
const UNIFORM_CHUNK: u64 = 64 * 1024;

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

/// The pending batch: one encoder and one open compute pass that every op appends to.
pub(super) struct Batch {
    pub encoder: Option<wgpu::CommandEncoder>,
    pub pass: Option<wgpu::ComputePass<'static>>,
    pub dispatches: u32,
    /// Host copy of this batch's uniform ring; uploaded just before submit.
    pub uniforms: Vec<u8>,
    /// Chunks of the ring on the device, reused by every batch (queue order keeps that safe).
    pub chunks: Vec<wgpu::Buffer>,
}

impl Device {
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

    pub(super) fn flush_locked(&self, b: &mut Batch) -> Result<Option<wgpu::SubmissionIndex>> {
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
        // `submit` runs wgpu-core's maintain too; racing a waiter whose wait timed out makes
        // wgpu-core 30.0.2 panic (fixed upstream after 30.0.2), so it takes the poll lock.
        let idx = {
            let _one_at_a_time = lock(&self.inner.poll);
            self.inner.queue.submit([encoder.finish()])
        };
        self.inner.epoch.fetch_add(1, Ordering::Relaxed);
        if !UNCOUNTED.get() {
            self.inner.submits.fetch_add(1, Ordering::Relaxed);
        }
        self.take_errors()?;
        Ok(Some(idx))
    }

    pub(super) fn wait(&self, idx: wgpu::SubmissionIndex) -> Result<()> {
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

    pub(super) fn check_lost(&self) -> Result<()> {
        match lock(&self.inner.lost).clone() {
            Some(msg) => Err(Error::DeviceLost(msg)),
            None => Ok(()),
        }
    }

    /// Turn errors wgpu reported since the last check into our error.
    pub(super) fn take_errors(&self) -> Result<()> {
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

    pub(super) fn encoder<'a>(&self, b: &'a mut Batch) -> &'a mut wgpu::CommandEncoder {
        b.encoder.get_or_insert_with(|| {
            self.inner
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("portagrad batch"),
                })
        })
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
        let psize = (std::mem::size_of::<P>() as u64).next_multiple_of(16);
        let pipe = self.pipeline(shader, entry, constants, bindings, psize)?;
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
        if !UNCOUNTED.get() {
            inner.dispatches.fetch_add(1, Ordering::Relaxed);
        }
        if b.dispatches >= inner.max_batch {
            self.flush_locked(&mut b)?;
        }
        Ok(())
    }
}
