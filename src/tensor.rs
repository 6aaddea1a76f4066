//! `Tensor`: a shape, an element type and a handle on device memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::autograd::Node;
use crate::error::{Error, Result};
use crate::runtime::{Device, Storage};

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float: all arithmetic.
    F32,
    /// 32-bit unsigned integer: token and class ids.
    U32,
    /// IEEE 754 half precision (1 sign, 5 exponent, 10 mantissa bits). Stored two per 32-bit
    /// word (element `2i` in the low half), so it works on every adapter, with or without
    /// `SHADER_F16`; kernels that take it compute in f32.
    F16,
    /// bfloat16 (f32's 8-bit exponent, 7 mantissa bits): storage two per 32-bit word like
    /// [`DType::F16`], computed in f32.
    BF16,
}

impl DType {
    /// Name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::U32 => "u32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Whether this is a floating-point type (f32, f16 or bf16).
    pub fn is_float(self) -> bool {
        self != DType::U32
    }

    /// Whether this is one of the 16-bit float types.
    pub fn is_half(self) -> bool {
        matches!(self, DType::F16 | DType::BF16)
    }
}

/// How a model computes its products (the `precision` of a training or inference run).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed precision: parameters, optimizer state, softmax, LayerNorm statistics, losses and
    /// reductions stay f32; the operands of the matmuls are cast to this 16-bit type (f16 or
    /// bf16) on the way in, and the products accumulate in f32.
    Mixed(DType),
}

impl Precision {
    /// Parse `f32`, `mixed` (bf16), `mixed-bf16` or `mixed-f16`.
    pub fn parse(s: &str) -> Option<Precision> {
        match s {
            "f32" => Some(Precision::F32),
            "mixed" | "mixed-bf16" | "bf16" => Some(Precision::Mixed(DType::BF16)),
            "mixed-f16" | "f16" => Some(Precision::Mixed(DType::F16)),
            _ => None,
        }
    }

    /// The name [`parse`](Self::parse) reads.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Mixed(DType::F16) => "mixed-f16",
            Precision::Mixed(_) => "mixed-bf16",
        }
    }
}

/// A dense, row-major tensor on a [`Device`]. Cloning is cheap (shares the buffer); ops record
/// GPU work and return new tensors without waiting for it.
#[derive(Clone)]
pub struct Tensor {
    pub(crate) dev: Device,
    pub(crate) storage: Arc<Storage>,
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    /// For u32 tensors whose data came from the host: one past the largest id, so gathers can
    /// range-check without a readback.
    pub(crate) id_bound: Option<u32>,
    /// For u32 tensors from the host: the ids themselves (the embedding backward groups
    /// positions by id on the host, no readback needed).
    pub(crate) host_ids: Option<Arc<[u32]>>,
    /// Identity for autograd; clones share it.
    pub(crate) id: u64,
    /// Gradients flow to (or through) this tensor.
    pub(crate) requires_grad: bool,
    /// The op that made this tensor, when recorded for autograd.
    pub(crate) node: Option<Arc<Node>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn fresh_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {})", self.shape, self.dtype.name())
    }
}

/// The first `n` little-endian u16s of `bytes`.
fn half_bits(bytes: &[u8], n: usize) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .take(n)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

pub(crate) fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Bytes a `dtype` tensor of `shape` occupies: 16-bit types round up to whole 32-bit words
/// (buffers and copies are 4-byte aligned).
pub(crate) fn bytes_of(op: &'static str, shape: &[usize], dtype: DType) -> Result<u64> {
    shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64))
        .map(|b| b.next_multiple_of(4))
        .ok_or_else(|| Error::Shape {
            op,
            message: format!("shape {shape:?} overflows"),
        })
}

impl Tensor {
    /// A fresh tensor (a new autograd identity, no gradient) over `storage`.
    fn on(dev: &Device, storage: Arc<Storage>, shape: &[usize], dtype: DType) -> Tensor {
        Tensor {
            dev: dev.clone(),
            storage,
            shape: shape.to_vec(),
            dtype,
            id_bound: None,
            host_ids: None,
            id: fresh_id(),
            requires_grad: false,
            node: None,
        }
    }

    /// An uninitialised tensor (contents are whatever the pooled buffer held).
    pub(crate) fn empty(
        dev: &Device,
        op: &'static str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let bytes = bytes_of(op, shape, dtype)?;
        dev.check_size(op, shape, bytes)?;
        Ok(Self::on(dev, dev.alloc(bytes, false)?, shape, dtype))
    }

    fn check_len(op: &'static str, shape: &[usize], len: usize, dtype: DType) -> Result<u64> {
        if numel(shape) != len {
            return Err(Error::Shape {
                op,
                message: format!(
                    "{len} values do not fill shape {shape:?} ({} elements)",
                    numel(shape)
                ),
            });
        }
        bytes_of(op, shape, dtype)
    }

    /// A tensor holding `data` in row-major order.
    pub fn from_slice(dev: &Device, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let bytes = Self::check_len("from_slice", shape, data.len(), DType::F32)?;
        dev.check_size("from_slice", shape, bytes)?;
        let storage = dev.upload(bytemuck::cast_slice(data))?;
        Ok(Self::on(dev, storage, shape, DType::F32))
    }

    /// A u32 tensor (token or class ids).
    pub fn from_u32(dev: &Device, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        let bytes = Self::check_len("from_u32", shape, data.len(), DType::U32)?;
        dev.check_size("from_u32", shape, bytes)?;
        let storage = dev.upload(bytemuck::cast_slice(data))?;
        Ok(Tensor {
            id_bound: Some(data.iter().max().map_or(0, |m| m.saturating_add(1))),
            host_ids: Some(data.into()),
            ..Self::on(dev, storage, shape, DType::U32)
        })
    }

    /// A `dtype` tensor holding `data` (f32 values) in row-major order: f32 as is, f16 and
    /// bf16 rounded to nearest (ties to even) on the host. For ids use [`from_u32`](Self::from_u32).
    pub fn from_slice_as(
        dev: &Device,
        data: &[f32],
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        const OP: &str = "from_slice_as";
        let bits: Vec<u16> = match dtype {
            DType::F32 => return Self::from_slice(dev, data, shape),
            DType::F16 => data
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect(),
            DType::BF16 => data
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect(),
            DType::U32 => {
                return Err(Error::DType {
                    op: OP,
                    expected: "f32, f16 or bf16",
                    got: dtype.name(),
                });
            }
        };
        Self::from_half_bits(dev, OP, &bits, shape, dtype)
    }

    /// An f16 tensor from the raw bits of its elements (as a safetensors F16 tensor stores
    /// them): no conversion.
    pub fn from_f16_bits(dev: &Device, bits: &[u16], shape: &[usize]) -> Result<Tensor> {
        Self::from_half_bits(dev, "from_f16_bits", bits, shape, DType::F16)
    }

    /// A bf16 tensor from the raw bits of its elements: no conversion.
    pub fn from_bf16_bits(dev: &Device, bits: &[u16], shape: &[usize]) -> Result<Tensor> {
        Self::from_half_bits(dev, "from_bf16_bits", bits, shape, DType::BF16)
    }

    fn from_half_bits(
        dev: &Device,
        op: &'static str,
        bits: &[u16],
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let le: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        Self::from_half_le_bytes(dev, op, &le, shape, dtype)
    }

    /// A 16-bit tensor from its elements' little-endian bytes, as a safetensors file stores
    /// them: uploaded as they are (two per word, element 2i in the low half; an odd tail is
    /// padded).
    pub(crate) fn from_half_le_bytes(
        dev: &Device,
        op: &'static str,
        le: &[u8],
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let bytes = Self::check_len(op, shape, le.len() / 2, dtype)?;
        dev.check_size(op, shape, bytes)?;
        let storage = if le.len() as u64 == bytes {
            dev.upload(le)?
        } else {
            let mut data = le.to_vec();
            data.resize(bytes as usize, 0);
            dev.upload(&data)?
        };
        Ok(Self::on(dev, storage, shape, dtype))
    }

    /// A tensor filled with `value`.
    pub fn full(dev: &Device, shape: &[usize], value: f32) -> Result<Tensor> {
        let t = Self::empty(dev, "full", shape, DType::F32)?;
        crate::ops::init::launch::fill(&t, value)?;
        Ok(t)
    }

    /// Zeros.
    pub fn zeros(dev: &Device, shape: &[usize]) -> Result<Tensor> {
        Self::full(dev, shape, 0.0)
    }

    /// Ones.
    pub fn ones(dev: &Device, shape: &[usize]) -> Result<Tensor> {
        Self::full(dev, shape, 1.0)
    }

    /// Uniform random values in `[low, high)`, generated on the device from `seed`.
    pub fn rand_uniform(
        dev: &Device,
        shape: &[usize],
        low: f32,
        high: f32,
        seed: u64,
    ) -> Result<Tensor> {
        if !(low.is_finite() && high.is_finite() && low <= high) {
            return Err(Error::InvalidArgument {
                op: "rand_uniform",
                message: format!("bounds [{low}, {high}) are not a finite, ordered range"),
            });
        }
        let t = Self::empty(dev, "rand_uniform", shape, DType::F32)?;
        crate::ops::init::launch::random(
            &t,
            crate::ops::init::launch::Dist::Uniform,
            low,
            high,
            seed,
        )?;
        Ok(t)
    }

    /// Normal random values with the given mean and standard deviation, generated on the device.
    pub fn rand_normal(
        dev: &Device,
        shape: &[usize],
        mean: f32,
        std: f32,
        seed: u64,
    ) -> Result<Tensor> {
        if !(mean.is_finite() && std.is_finite() && std >= 0.0) {
            return Err(Error::InvalidArgument {
                op: "rand_normal",
                message: format!("mean {mean} and std {std} must be finite with std >= 0"),
            });
        }
        let t = Self::empty(dev, "rand_normal", shape, DType::F32)?;
        crate::ops::init::launch::random(
            &t,
            crate::ops::init::launch::Dist::Normal,
            mean,
            std,
            seed,
        )?;
        Ok(t)
    }

    /// The device this tensor lives on.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Copy the data to the host (submits pending work and waits for it): the values of an
    /// f32, f16 or bf16 tensor, as f32 (exact: every f16 and bf16 value is an f32).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.expect_float("to_vec")?;
        let bytes = self.dev.read(&self.storage, self.bytes_read())?;
        Ok(self.floats_of(&bytes))
    }

    /// The raw bits of an f16 or bf16 tensor's elements (what a safetensors file stores).
    pub fn to_half_bits(&self) -> Result<Vec<u16>> {
        if !self.dtype.is_half() {
            return Err(Error::DType {
                op: "to_half_bits",
                expected: "f16 or bf16",
                got: self.dtype.name(),
            });
        }
        let bytes = self.dev.read(&self.storage, self.bytes_read())?;
        Ok(half_bits(&bytes, self.numel()))
    }

    /// The stored little-endian bytes of the elements (any dtype; no conversion, no padding).
    pub(crate) fn raw_bytes(&self) -> Result<Vec<u8>> {
        let mut bytes = self.dev.read(&self.storage, self.bytes_read())?;
        bytes.truncate(self.numel() * self.dtype.size());
        Ok(bytes)
    }

    fn expect_float(&self, op: &'static str) -> Result<()> {
        if !self.dtype.is_float() {
            return Err(Error::DType {
                op,
                expected: "f32, f16 or bf16",
                got: self.dtype.name(),
            });
        }
        Ok(())
    }

    /// Bytes a readback copies: whole words.
    fn bytes_read(&self) -> u64 {
        (self.numel() * self.dtype.size()).next_multiple_of(4) as u64
    }

    /// f32 values from the read-back bytes of this float tensor.
    fn floats_of(&self, bytes: &[u8]) -> Vec<f32> {
        let n = self.numel();
        match self.dtype {
            DType::F16 => half_bits(bytes, n)
                .into_iter()
                .map(|b| half::f16::from_bits(b).to_f32())
                .collect(),
            DType::BF16 => half_bits(bytes, n)
                .into_iter()
                .map(|b| half::bf16::from_bits(b).to_f32())
                .collect(),
            DType::F32 | DType::U32 => bytemuck::pod_collect_to_vec(&bytes[..4 * n]),
        }
    }

    /// The elements of a `dtype` tensor, read back (submits pending work and waits).
    fn host<T: bytemuck::Pod>(&self, op: &'static str, dtype: DType) -> Result<Vec<T>> {
        self.expect_dtype(op, dtype)?;
        let bytes = self.dev.read(&self.storage, 4 * self.numel() as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// [`to_vec`](Self::to_vec) for async code: in a browser (WebGPU) it awaits the copy while
    /// the page runs; native targets wait as `to_vec` does.
    pub async fn to_vec_async(&self) -> Result<Vec<f32>> {
        self.expect_float("to_vec_async")?;
        let bytes = self
            .dev
            .read_async(&self.storage, self.bytes_read())
            .await?;
        Ok(self.floats_of(&bytes))
    }

    /// [`to_vec_u32`](Self::to_vec_u32) for async code (see [`to_vec_async`](Self::to_vec_async)).
    pub async fn to_vec_u32_async(&self) -> Result<Vec<u32>> {
        self.host_async("to_vec_u32_async", DType::U32).await
    }

    /// The elements of a `dtype` tensor, read back without blocking.
    async fn host_async<T: bytemuck::Pod>(&self, op: &'static str, dtype: DType) -> Result<Vec<T>> {
        self.expect_dtype(op, dtype)?;
        let bytes = self
            .dev
            .read_async(&self.storage, 4 * self.numel() as u64)
            .await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Copy a u32 tensor to the host.
    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        self.host("to_vec_u32", DType::U32)
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        self.expect_one("item")?;
        Ok(self.to_vec()?[0])
    }

    /// [`item`](Self::item) for async code (see [`to_vec_async`](Self::to_vec_async)).
    pub async fn item_async(&self) -> Result<f32> {
        self.expect_one("item_async")?;
        Ok(self.to_vec_async().await?[0])
    }

    fn expect_one(&self, op: &'static str) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::Shape {
                op,
                message: format!(
                    "tensor of shape {:?} has {} elements, not 1",
                    self.shape,
                    self.numel()
                ),
            });
        }
        Ok(())
    }

    pub(crate) fn expect_dtype(&self, op: &'static str, want: DType) -> Result<()> {
        if self.dtype != want {
            return Err(Error::DType {
                op,
                expected: want.name(),
                got: self.dtype.name(),
            });
        }
        Ok(())
    }

    pub(crate) fn same_device(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if !other.storage.same_device(&self.dev) {
            return Err(Error::DeviceMismatch { op });
        }
        Ok(())
    }

    /// Resolve a reshape target (one `usize::MAX` dimension is inferred) and check it.
    pub(crate) fn reshape_shape(&self, shape: &[usize]) -> Result<Vec<usize>> {
        let mut shape = shape.to_vec();
        // Checked: a product that wraps could equal the element count (2 * (2^63 + 3) is 6).
        let known = shape
            .iter()
            .filter(|&&d| d != usize::MAX)
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::Shape {
                op: "reshape",
                message: format!("shape {shape:?} overflows"),
            })?;
        let infer = shape.iter().filter(|&&d| d == usize::MAX).count();
        if infer > 1 {
            return Err(Error::Shape {
                op: "reshape",
                message: format!("more than one inferred dimension in {shape:?}"),
            });
        }
        if infer == 1 {
            if known == 0 || !self.numel().is_multiple_of(known) {
                return Err(Error::Shape {
                    op: "reshape",
                    message: format!(
                        "cannot infer a dimension reshaping {:?} to {shape:?}",
                        self.shape
                    ),
                });
            }
            let pos = shape
                .iter()
                .position(|&d| d == usize::MAX)
                .expect("counted above");
            shape[pos] = self.numel() / known;
        }
        if numel(&shape) != self.numel() {
            return Err(Error::Shape {
                op: "reshape",
                message: format!(
                    "cannot reshape {:?} ({} elements) to {shape:?}",
                    self.shape,
                    self.numel()
                ),
            });
        }
        Ok(shape)
    }

    /// A view of the same buffer with another shape, outside autograd.
    pub(crate) fn view_raw(&self, shape: Vec<usize>) -> Tensor {
        Tensor {
            shape,
            id: fresh_id(),
            requires_grad: false,
            node: None,
            ..self.clone()
        }
    }
}
