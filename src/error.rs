//! The one error type of the crate.

/// Everything that can go wrong in portagrad. Messages name the op and the shapes involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter could be found (or none matched the requested filter).
    #[error(
        "no GPU adapter found{detail}. portagrad needs a Vulkan, Metal or DX12 adapter. \
         On Linux without a GPU install Mesa's software Vulkan driver: \
         `sudo apt-get install mesa-vulkan-drivers libvulkan1` (Debian/Ubuntu) or \
         `sudo dnf install mesa-vulkan-drivers` (Fedora)"
    )]
    NoAdapter {
        /// What was searched for and what was seen.
        detail: String,
    },
    /// In a browser: no WebGPU adapter was offered.
    #[error(
        "this browser offers no WebGPU adapter: WebGPU is off or unsupported here \
         (headless Chromium needs --enable-unsafe-webgpu)"
    )]
    NoWebGpu,
    /// An adapter was found but refused to give a device.
    #[error("could not open a device on adapter {adapter}: {message}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// wgpu's message.
        message: String,
    },
    /// Operand shapes do not fit the operation, or a backward (a custom op's, say) returned a
    /// gradient whose shape is not its input's.
    #[error("{op}: {message}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// What is wrong, with the shapes.
        message: String,
    },
    /// An operand has the wrong element type.
    #[error("{op}: expected a {expected} tensor, got {got}")]
    DType {
        /// The operation.
        op: &'static str,
        /// The type the op needs.
        expected: &'static str,
        /// The type it was given.
        got: &'static str,
    },
    /// A value outside what the op accepts (a token id past the table, a bad scalar, ...).
    #[error("{op}: {message}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A buffer would exceed what the adapter allows.
    #[error(
        "{op}: tensor of shape {shape:?} needs {bytes} bytes, more than the adapter allows ({limit} bytes, {which})"
    )]
    TooLarge {
        /// The operation.
        op: &'static str,
        /// Requested shape.
        shape: Vec<usize>,
        /// Requested bytes.
        bytes: u64,
        /// The adapter's limit.
        limit: u64,
        /// Which limit.
        which: &'static str,
    },
    /// Tensors from two different devices were combined.
    #[error("{op}: operands live on different devices")]
    DeviceMismatch {
        /// The operation.
        op: &'static str,
    },
    /// The GPU ran out of memory.
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    /// wgpu reported a validation or internal error (a bug in portagrad, please report it).
    #[error("GPU error: {0}")]
    Gpu(String),
    /// The device was lost (driver reset, GPU removed, or a hang the driver killed).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Training diverged: the loss became NaN or infinite (a match arm for an application that
    /// retries with a lower learning rate).
    #[error(
        "{op}: the loss became {value} at epoch {epoch}, batch {batch} (optimizer step {step}); \
         lower the learning rate, clip gradients, or check the data for NaN/Inf"
    )]
    NonFiniteLoss {
        /// Where it was noticed (`fit`).
        op: &'static str,
        /// Epoch, from 1.
        epoch: usize,
        /// Batch within the epoch, from 1.
        batch: usize,
        /// Optimizer steps done when that batch's loss was computed, plus one.
        step: u64,
        /// The loss value (NaN or infinite).
        value: f32,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// `Result` with portagrad's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
