//! Launcher for `shaders/copy.wgsl`: per-step scalars logged on the device, in-place copies.

use crate::error::{Error, Result};
use crate::ops::{elems_grid, shader};
use crate::runtime::{Access, Shader};
use crate::tensor::{DType, Tensor};

pub(crate) const SHADER: Shader = shader("copy", include_str!("../../../shaders/copy.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    index: u32,
    n: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// `log[index] = (a, b)` for one-element tensors `a`, `b` and a (rows, 2) `log`.
pub(crate) fn log_pair(log: &Tensor, index: usize, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.numel() != 1 || b.numel() != 1 || index >= log.numel() / 2 {
        return Err(Error::Shape {
            op: "log_pair",
            message: format!(
                "needs one-element values and a row inside the log; got {:?}, {:?}, row {index} of {:?}",
                a.shape, b.shape, log.shape
            ),
        });
    }
    let p = Params {
        index: index as u32,
        n: 0,
        _pad: [0; 2],
    };
    // a: (1), b: (1), log: (rows, 2)
    log.dev.dispatch(
        &SHADER,
        "log_pair",
        &[],
        &p,
        &[
            (&a.storage, Access::Read),
            (&b.storage, Access::Read),
            (&log.storage, Access::ReadWrite),
        ],
        [1, 1, 1],
    )
}

/// Write `src`'s values into `dst`'s buffer (same element count), so every holder of `dst`
/// sees them.
pub(crate) fn copy_into(dst: &Tensor, src: &Tensor) -> Result<()> {
    dst.expect_dtype("copy_into", DType::F32)?;
    src.expect_dtype("copy_into", DType::F32)?;
    dst.same_device("copy_into", src)?;
    if dst.numel() != src.numel() {
        return Err(Error::Shape {
            op: "copy_into",
            message: format!("cannot copy {:?} into {:?}", src.shape, dst.shape),
        });
    }
    let n = dst.numel();
    let p = Params {
        index: 0,
        n: n as u32,
        _pad: [0; 2],
    };
    // a: (n) source, b: unused (bound to the source), out: (n) destination
    dst.dev.dispatch(
        &SHADER,
        "copy",
        &[],
        &p,
        &[
            (&src.storage, Access::Read),
            (&src.storage, Access::Read),
            (&dst.storage, Access::ReadWrite),
        ],
        elems_grid(n)?,
    )
}
