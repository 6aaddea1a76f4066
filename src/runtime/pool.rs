//! Buffer pool: storage buffers are kept by size class and handed out again, so a training
//! step allocates nothing from the driver after warm-up.

use std::collections::HashMap;

/// What a pooled buffer is for; the two kinds never mix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum BufKind {
    /// STORAGE | COPY_SRC | COPY_DST: tensor data.
    Storage,
    /// MAP_READ | COPY_DST: readback staging.
    Readback,
}

pub(crate) struct FreeBuf {
    pub buf: wgpu::Buffer,
    pub id: u64,
    /// Batch epoch in which it was released; commands recorded in that batch may still read it.
    pub freed_epoch: u64,
}

#[derive(Default)]
pub(crate) struct Pool {
    free: HashMap<(BufKind, u64), Vec<FreeBuf>>,
    pub cached_bytes: u64,
}

/// Round a request up to its size class: 4 classes per power of two (at most 25% slack),
/// so buffers are reused across slightly different shapes without waste growing unbounded.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    if bytes <= 1024 {
        return bytes.next_power_of_two();
    }
    let top = 1u64 << (63 - (bytes - 1).leading_zeros());
    let step = top / 4;
    bytes.div_ceil(step) * step
}

impl Pool {
    /// Take a buffer of `class` bytes. `need_idle` asks for one no pending command refers to
    /// (uploads through `queue.write_buffer` land before the pending batch runs).
    pub fn take(
        &mut self,
        kind: BufKind,
        class: u64,
        need_idle: bool,
        epoch: u64,
    ) -> Option<FreeBuf> {
        let list = self.free.get_mut(&(kind, class))?;
        let pos = if need_idle {
            list.iter().rposition(|b| b.freed_epoch < epoch)?
        } else {
            list.len().checked_sub(1)?
        };
        let b = list.swap_remove(pos);
        self.cached_bytes -= class;
        Some(b)
    }

    pub fn put(&mut self, kind: BufKind, class: u64, b: FreeBuf) {
        self.cached_bytes += class;
        self.free.entry((kind, class)).or_default().push(b);
    }

    pub fn clear(&mut self) {
        self.free.clear();
        self.cached_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn classes_cover_request_with_bounded_slack() {
        for bytes in [
            1u64,
            255,
            256,
            257,
            1000,
            1025,
            4096,
            5000,
            123_456,
            1 << 30,
        ] {
            let c = size_class(bytes);
            assert!(c >= bytes, "{bytes} -> {c}");
            assert!(c <= (bytes.max(256) * 5) / 4 + 256, "{bytes} -> {c}");
            assert_eq!(c % 4, 0);
        }
    }
}
