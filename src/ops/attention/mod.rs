//! Multi-head softmax attention: a fused forward and backward pass that never hold a (T, T)
//! matrix, the head split / merge around it, and a KV cache with a decode kernel for generation.
//!
//! ```no_run
//! use portagrad::{
//!     Device, KvCache, Tensor, attend_cached, attention, attention_qkv, merge_heads, split_heads,
//! };
//! # fn main() -> portagrad::Result<()> {
//! let dev = Device::new()?;
//! let (b, t, c, n_head) = (2, 16, 64, 4);
//! // A fused QKV projection (B, T, 3C), e.g. the output of a linear layer.
//! let qkv = Tensor::rand_normal(&dev, &[b, t, 3 * c], 0.0, 1.0, 1)?.with_grad();
//! let (q, k, v) = split_heads(&qkv, n_head)?; // each (B, H, T, D), D = C / H
//! let y = merge_heads(&attention(&q, &k, &v, true)?)?; // (B, T, C)
//! let grads = y.sum()?.backward()?;
//! assert_eq!(grads.get(&qkv).unwrap().shape(), &[b, t, 3 * c]);
//! // The same as one recorded op (a cheaper backward): what a Transformer block uses.
//! let y2 = attention_qkv(&qkv, n_head, true)?;
//!
//! // Generation: append one position at a time and attend the new query to the cache.
//! let mut cache = KvCache::new(&dev, b, n_head, 128, c / n_head)?;
//! let q1 = Tensor::rand_normal(&dev, &[b, n_head, 1, c / n_head], 0.0, 1.0, 2)?;
//! let k1 = Tensor::rand_normal(&dev, &[b, n_head, 1, c / n_head], 0.0, 1.0, 3)?;
//! let v1 = Tensor::rand_normal(&dev, &[b, n_head, 1, c / n_head], 0.0, 1.0, 4)?;
//! cache.append(&k1, &v1)?;
//! let y1 = attend_cached(&q1, &cache)?; // (B, H, 1, D)
//! # Ok(()) }
//! ```

use crate::autograd::BackwardFn;
use crate::error::{Error, Result};
pub(crate) mod generate;
pub(crate) mod heads;
pub(crate) mod launch;
pub(crate) mod plan;
pub mod reference;

use self::launch as kern;
use crate::runtime::Device;
use crate::tensor::{DType, Tensor};

/// Largest head size the fused kernels take (`D`); any multiple of 4 up to it works, e.g. the
/// usual 16, 32, 64, 80 and 128.
pub const MAX_HEAD_DIM: usize = 128;

fn check_head_dim(op: &'static str, what: &str, shape: &[usize]) -> Result<usize> {
    let d = shape[3];
    if d == 0 || !d.is_multiple_of(4) || d > MAX_HEAD_DIM {
        return Err(Error::Shape {
            op,
            message: format!(
                "head size D = {d} of {what} {shape:?} is not supported: D must be a multiple of 4 \
                 from 4 to {MAX_HEAD_DIM} (e.g. 16, 32, 64, 80, 128)"
            ),
        });
    }
    Ok(d)
}

fn check_rank4(op: &'static str, what: &str, x: &Tensor) -> Result<()> {
    x.expect_dtype(op, DType::F32)?;
    if x.rank() != 4 {
        return Err(Error::Shape {
            op,
            message: format!("{what} must be (B, H, T, D), got shape {:?}", x.shape()),
        });
    }
    Ok(())
}

/// Scaled dot-product attention over heads: `softmax(q kᵀ / sqrt(D) [+ causal mask]) v`.
///
/// `q` is (B, H, T, D) and `k`, `v` are (B, Hkv, T, D) f32 tensors, with H a multiple of Hkv:
/// Hkv = H is multi-head attention, 1 < Hkv < H grouped-query attention (query head `h` reads
/// K/V head `h / (H / Hkv)`), Hkv = 1 multi-query attention. K and V are never repeated in
/// memory: the kernels index the shared head, and the backward sums dK and dV over the query
/// heads of each group inside the dK/dV kernel. The result is (B, H, T, D). With
/// `causal`, query row `t` attends to key rows `0..=t` only. D must be a multiple of 4 up to
/// [`MAX_HEAD_DIM`]; T is any length.
///
/// One fused kernel: it walks the keys in tiles with an online (streaming) softmax, so memory
/// is O(B·H·T·D), never O(T²). It also saves the per-row log-sum-exp (B, H, T), from which
/// the backward pass (recorded when an input requires a gradient) recomputes the scores tile by
/// tile: one kernel for dQ over query rows, one for dK and dV over key rows, deterministic
/// (no atomics).
///
/// Errors name the shapes: ranks other than 4, k and v shapes that differ or disagree with q
/// on B, T or D, H not a multiple of Hkv, unsupported D, non-f32 tensors, tensors on different
/// devices.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
    const OP: &str = "attention";
    check_rank4(OP, "q", q)?;
    check_rank4(OP, "k", k)?;
    check_rank4(OP, "v", v)?;
    q.same_device(OP, k)?;
    q.same_device(OP, v)?;
    let (qs, ks) = (q.shape(), k.shape());
    if ks != v.shape()
        || ks[0] != qs[0]
        || ks[2] != qs[2]
        || ks[3] != qs[3]
        || ks[1] == 0
        || !qs[1].is_multiple_of(ks[1])
    {
        return Err(Error::Shape {
            op: OP,
            message: format!(
                "q {qs:?} must be (B, H, T, D) and k {ks:?}, v {:?} both (B, Hkv, T, D) with H a \
                 multiple of Hkv",
                v.shape()
            ),
        });
    }
    check_head_dim(OP, "q", q.shape())?;
    let (o, lse) = kern::forward(q, k, v, causal)?;
    if !Tensor::should_record(&[q, k, v]) {
        return Ok(o);
    }
    let (qd, kd, vd, od) = (q.detach(), k.detach(), v.detach(), o.detach());
    let back: BackwardFn = Box::new(move |g| {
        let (dq, dk, dv) = kern::backward(&qd, &kd, &vd, &od, &lse, g, causal)?;
        Ok(vec![Some(dq), Some(dk), Some(dv)])
    });
    Ok(o.record(OP, &[q, k, v], back))
}

/// Split a fused QKV projection `qkv` (B, T, 3·C) into per-head `(q, k, v)`, each
/// (B, H, T, D) with H = `n_head` and D = C / H: column `s·C + h·D + d` of `qkv` goes to head
/// `h`, element `d` of tensor `s`. Three permutation kernels, no host copy.
///
/// Each output records its own backward (its gradient scattered into a zeroed (B, T, 3·C)
/// buffer; autograd sums the three), so gradients reach `qkv` through any of them.
pub fn split_heads(qkv: &Tensor, n_head: usize) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "split_heads";
    qkv.expect_dtype(OP, DType::F32)?;
    let s = qkv.shape();
    if s.len() != 3 || !s[2].is_multiple_of(3) || n_head == 0 || !(s[2] / 3).is_multiple_of(n_head)
    {
        return Err(Error::Shape {
            op: OP,
            message: format!(
                "needs a fused (B, T, 3*C) tensor with C divisible by n_head = {n_head}, got shape {s:?}"
            ),
        });
    }
    let part = |slot: usize| -> Result<Tensor> {
        let out = heads::rows_to_heads(qkv, slot, 3, n_head)?;
        let back: BackwardFn = Box::new(move |g| Ok(vec![Some(heads::heads_to_rows(g, slot, 3)?)]));
        Ok(out.record(OP, &[qkv], back))
    };
    Ok((part(0)?, part(1)?, part(2)?))
}

/// Split a fused grouped-query projection `qkv` (B, T, (H + 2·Hkv)·D) into `q` (B, H, T, D)
/// and `k`, `v` (B, Hkv, T, D), with H = `n_head` and Hkv = `n_kv_head`: columns
/// `0 .. H·D` are q, the next `Hkv·D` k, the last `Hkv·D` v, each head-major (column
/// `h·D + d` of a block is head `h`, element `d`). That is the output of one matmul whose
/// weight stacks Hugging Face's `q_proj`, `k_proj` and `v_proj` (and whose bias, for Qwen2's
/// q/k/v biases, concatenates theirs); with Hkv = H it is [`split_heads`]'s layout.
///
/// Each output records its own backward (its gradient scattered into a zeroed
/// (B, T, (H + 2·Hkv)·D) buffer; autograd sums the three).
///
/// Errors (naming `split_qkv` and the shape): not a rank-3 f32 tensor, a zero head count, H
/// not a multiple of Hkv, a last axis not a positive multiple of H + 2·Hkv.
pub fn split_qkv(
    qkv: &Tensor,
    n_head: usize,
    n_kv_head: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "split_qkv";
    qkv.expect_dtype(OP, DType::F32)?;
    let s = qkv.shape();
    let heads = n_head + 2 * n_kv_head;
    if s.len() != 3
        || n_head == 0
        || n_kv_head == 0
        || !n_head.is_multiple_of(n_kv_head)
        || s[2] == 0
        || !s[2].is_multiple_of(heads)
    {
        return Err(Error::Shape {
            op: OP,
            message: format!(
                "needs a fused (B, T, (H + 2*Hkv)*D) tensor with H = {n_head} a multiple of \
                 Hkv = {n_kv_head} (both positive), got shape {s:?}"
            ),
        });
    }
    let (w, d) = (s[2], s[2] / heads);
    let part = |col0: usize, h: usize| -> Result<Tensor> {
        let out = heads::cols_to_heads(qkv, col0, h, d)?;
        let back: BackwardFn = Box::new(move |g| Ok(vec![Some(heads::heads_to_cols(g, col0, w)?)]));
        Ok(out.record(OP, &[qkv], back))
    };
    Ok((
        part(0, n_head)?,
        part(n_head * d, n_kv_head)?,
        part((n_head + n_kv_head) * d, n_kv_head)?,
    ))
}

/// Self-attention from a fused QKV projection: `qkv` (B, T, 3·C) -> (B, T, C) with `n_head`
/// heads. The same values as [`split_heads`], [`attention`] and [`merge_heads`] in a row, but
/// recorded as one op, so its backward writes d(qkv) with a single kernel (through
/// [`split_heads`], each of q, k and v scatters its gradient into a zeroed (B, T, 3·C) buffer
/// and autograd adds the three). Use this in a Transformer block; the pieces stay available for
/// anything else (e.g. filling a [`KvCache`]).
///
/// Errors as for [`split_heads`] and [`attention`].
pub fn attention_qkv(qkv: &Tensor, n_head: usize, causal: bool) -> Result<Tensor> {
    const OP: &str = "attention_qkv";
    let (q, k, v) = {
        let _g = crate::no_grad();
        split_heads(qkv, n_head)?
    };
    check_head_dim(OP, "the heads of qkv", q.shape())?;
    let (o, lse) = kern::forward(&q, &k, &v, causal)?;
    let y = heads::heads_to_rows(&o, 0, 1)?;
    if !Tensor::should_record(&[qkv]) {
        return Ok(y);
    }
    let back: BackwardFn = Box::new(move |g| {
        let d_o = heads::rows_to_heads(g, 0, 1, n_head)?;
        let (dq, dk, dv) = kern::backward(&q, &k, &v, &o, &lse, &d_o, causal)?;
        Ok(vec![Some(heads::heads3_to_rows(&dq, &dk, &dv)?)])
    });
    Ok(y.record(OP, &[qkv], back))
}

/// Merge heads back: (B, H, T, D) -> (B, T, H·D), head `h` element `d` to column `h·D + d`
/// (the inverse of one part of [`split_heads`]). One permutation kernel; backward recorded.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "merge_heads";
    check_rank4(OP, "input", x)?;
    let heads = x.shape()[1];
    let out = heads::heads_to_rows(x, 0, 1)?;
    let back: BackwardFn = Box::new(move |g| Ok(vec![Some(heads::rows_to_heads(g, 0, 1, heads)?)]));
    Ok(out.record(OP, &[x], back))
}

/// The keys and values of one attention layer for incremental decoding: two (B, Hkv, max_len, D)
/// buffers allocated once, filled in place by [`append`](Self::append), read by
/// [`attend_cached`]. Hkv is the number of K/V heads: with grouped-query or multi-query
/// attention it is smaller than the number of query heads, and the cache holds only those
/// heads (nothing repeated). Not part of autograd (generation runs without gradients).
pub struct KvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KvCache({:?}, len {})", self.k.shape(), self.len)
    }
}

impl KvCache {
    /// An empty cache for `batch` sequences of `heads` K/V heads (n_kv_heads; the query heads
    /// may be any multiple of it) of size `head_dim`, holding up to `max_len` positions.
    /// `head_dim` follows [`attention`]'s rule (multiple of 4, at most [`MAX_HEAD_DIM`]).
    pub fn new(
        dev: &Device,
        batch: usize,
        heads: usize,
        max_len: usize,
        head_dim: usize,
    ) -> Result<KvCache> {
        let shape = [batch, heads, max_len, head_dim];
        check_head_dim("KvCache::new", "cache", &shape)?;
        if batch == 0 || heads == 0 || max_len == 0 {
            return Err(Error::Shape {
                op: "KvCache::new",
                message: format!("cache shape {shape:?} (B, H, max_len, D) has a zero dimension"),
            });
        }
        Ok(KvCache {
            k: Tensor::zeros(dev, &shape)?,
            v: Tensor::zeros(dev, &shape)?,
            len: 0,
        })
    }

    /// Positions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no position is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn max_len(&self) -> usize {
        self.k.shape()[2]
    }

    /// The buffers' shape (B, H, max_len, D).
    pub fn shape(&self) -> &[usize] {
        self.k.shape()
    }

    /// Forget every position (the buffers are kept and overwritten by later appends).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Keep only the first `len` positions (e.g. to rewind rejected speculative tokens); a
    /// `len` past [`len`](Self::len) is an error.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::InvalidArgument {
                op: "KvCache::truncate",
                message: format!(
                    "cannot truncate a cache holding {} positions to {len}",
                    self.len
                ),
            });
        }
        self.len = len;
        Ok(())
    }

    /// The whole key buffer (B, H, max_len, D); rows at and past [`len`](Self::len) are stale.
    pub fn keys(&self) -> &Tensor {
        &self.k
    }

    /// The whole value buffer (B, H, max_len, D); rows at and past [`len`](Self::len) are stale.
    pub fn values(&self) -> &Tensor {
        &self.v
    }

    /// Append `n` positions: `k` and `v` are (B, H, n, D), written in place at rows
    /// `len .. len + n` by one kernel. Appending past `max_len` is an error (nothing is written).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        const OP: &str = "KvCache::append";
        check_rank4(OP, "k", k)?;
        check_rank4(OP, "v", v)?;
        self.k.same_device(OP, k)?;
        self.k.same_device(OP, v)?;
        let cs = self.k.shape();
        let ks = k.shape();
        if ks != v.shape() || ks[0] != cs[0] || ks[1] != cs[1] || ks[3] != cs[3] {
            return Err(Error::Shape {
                op: OP,
                message: format!(
                    "k {ks:?} and v {:?} must both be (B, H, n, D) = ({}, {}, n, {}) for a cache of shape {cs:?}",
                    v.shape(),
                    cs[0],
                    cs[1],
                    cs[3]
                ),
            });
        }
        let n = ks[2];
        if self.len + n > self.max_len() {
            return Err(Error::InvalidArgument {
                op: OP,
                message: format!(
                    "appending {n} positions to a cache holding {} of at most {} (shape {cs:?})",
                    self.len,
                    self.max_len()
                ),
            });
        }
        if n > 0 {
            kern::kv_append(&self.k, &self.v, k, v, self.len)?;
        }
        self.len += n;
        Ok(())
    }
}

/// Decode step: attend the newest query positions `q` (B, H, n, D), usually n = 1, to the
/// cache's first [`KvCache::len`] keys and values -> (B, H, n, D). H must be a multiple of the
/// cache's K/V heads Hkv; query head `h` reads cached head `h / (H / Hkv)`. Query row `r` is
/// position `len - n + r` and sees the cached positions up to and including it (causal), so with n = 1
/// it sees the whole cache; append the new keys and values first. Matches row `len - n + r` of
/// the full causal [`attention`]. One kernel: each (sequence, head, row) is a workgroup whose
/// invocations split the cached keys and merge their softmax states at the end.
pub fn attend_cached(q: &Tensor, cache: &KvCache) -> Result<Tensor> {
    const OP: &str = "attend_cached";
    check_rank4(OP, "q", q)?;
    cache.k.same_device(OP, q)?;
    let (qs, cs) = (q.shape(), cache.shape());
    if qs[0] != cs[0] || !qs[1].is_multiple_of(cs[1]) || qs[1] == 0 || qs[3] != cs[3] {
        return Err(Error::Shape {
            op: OP,
            message: format!(
                "q {qs:?} must be (B, H, n, D) = ({}, H, n, {}) with H a multiple of the {} K/V \
                 heads, for a cache of shape {cs:?}",
                cs[0], cs[3], cs[1]
            ),
        });
    }
    if qs[2] == 0 || qs[2] > cache.len() {
        return Err(Error::Shape {
            op: OP,
            message: format!(
                "q {qs:?} holds {} query positions but the cache holds {}: append the new keys and values first",
                qs[2],
                cache.len()
            ),
        });
    }
    kern::decode(q, &cache.k, &cache.v, cache.len())
}

/// WGSL of the module CPU adapters with subgroups run for head size `head_dim`: the portable
/// kernels plus straight-line subgroup kernels generated for that head size (a shader, not a
/// CPU reference: those are in `testing::reference::attention`). For the shader validation test.
#[doc(hidden)]
pub fn attention_shader_source_for_cpu_adapters(head_dim: usize) -> String {
    generate::cpu_source(head_dim)
}

/// WGSL of the module GPUs run for head size `head_dim`: the portable kernels, plus the tiled
/// ones when `tiled`, with the head size built in as a constant. For the shader validation test.
#[doc(hidden)]
pub fn attention_shader_source_for_gpus(head_dim: usize, tiled: bool) -> String {
    generate::fixed_d_source(head_dim, tiled)
}

/// Which attention kernels run on `dev` for head size `head_dim`: `"subgroup-cpu"`
/// (straight-line kernels generated per head size for CPU adapters such as lavapipe, tiles
/// shared through subgroup broadcasts), `"tiled"` (GPUs: blocks staged in workgroup memory) or
/// `"portable"` (one row per invocation, tiles read from storage; CPU adapters without
/// subgroups). For benchmarks and bug reports; `PORTAGRAD_KERNELS=attention=portable` or
/// `=tiled` forces a kind.
pub fn attention_variant(dev: &Device, head_dim: usize) -> &'static str {
    plan::plan_name(dev, head_dim)
}
