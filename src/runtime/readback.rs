//! Readback: copy a tensor's buffer to the host through a pooled staging buffer, blocking
//! (native) or awaited (async, the only way in a browser).

use std::sync::atomic::Ordering;

use super::pool::{BufKind, FreeBuf, size_class};
use super::{Device, Storage, lock};
use crate::error::{Error, Result};

impl Device {
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
