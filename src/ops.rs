//! The public op methods of [`Tensor`]. Each checks shapes and types, records its forward
//! dispatch(es) through a launcher in `kernels`, and, when an input requires a gradient,
//! attaches the backward (GPU ops too) to the output.

use crate::error::{Error, Result};
use crate::kernels::{elementwise, layout, reduce, softmax, unary};
use crate::tensor::Tensor;

fn binary(a: &Tensor, b: &Tensor, op: elementwise::Op) -> Result<Tensor> {
    use elementwise::Op;
    let out = elementwise::binary(a, b, op)?;
    if !Tensor::should_record(&[a, b]) {
        return Ok(out);
    }
    let (sa, sb) = (a.shape.clone(), b.shape.clone());
    let (ad, bd, od) = (a.detach(), b.detach(), out.detach());
    let back: crate::autograd::BackwardFn = Box::new(move |g| {
        let (ga, gb) = match op {
            Op::Add => (g.clone(), g.clone()),
            Op::Sub => (g.clone(), g.neg()?),
            Op::Mul => (g.mul(&bd)?, g.mul(&ad)?),
            Op::Div => {
                let ga = g.div(&bd)?;
                let gb = ga.mul(&od)?.neg()?;
                (ga, gb)
            }
        };
        Ok(vec![
            Some(reduce::sum_to(&ga, &sa)?),
            Some(reduce::sum_to(&gb, &sb)?),
        ])
    });
    Ok(out.record(op.entry(), &[a, b], back))
}

fn unary_op(x: &Tensor, op: unary::Op, s: f32) -> Result<Tensor> {
    use unary::Op;
    let out = unary::unary(x, op, s)?;
    if !Tensor::should_record(&[x]) {
        return Ok(out);
    }
    // Which forward value the derivative is written in terms of.
    let saved = match op {
        Op::Exp | Op::Sqrt | Op::Sigmoid | Op::Tanh => Some(out.detach()),
        Op::Log | Op::PowScalar | Op::Relu | Op::Gelu => Some(x.detach()),
        Op::AddScalar | Op::MulScalar | Op::Neg => None,
    };
    let back: crate::autograd::BackwardFn = Box::new(move |g| {
        let gx = match (op, &saved) {
            (Op::AddScalar, _) => g.clone(),
            (Op::MulScalar, _) => g.mul_scalar(s)?,
            (Op::Neg, _) => g.neg()?,
            (_, Some(v)) => unary::backward(op, v, g, s)?,
            (_, None) => unreachable!("every other op saves a value"),
        };
        Ok(vec![Some(gx)])
    });
    Ok(out.record(op.entry(), &[x], back))
}

fn reduce_op(x: &Tensor, op: reduce::Op, last_axis: bool) -> Result<Tensor> {
    let out = if last_axis {
        reduce::last_axis(x, op)?
    } else {
        reduce::all(x, op)?
    };
    if !Tensor::should_record(&[x]) {
        return Ok(out);
    }
    let shape = x.shape.clone();
    let back: crate::autograd::BackwardFn = Box::new(move |g| {
        let n = if last_axis {
            *shape.last().unwrap_or(&1)
        } else {
            shape.iter().product()
        };
        let scale = match op {
            reduce::Op::Sum => 1.0,
            reduce::Op::Mean => 1.0 / n as f32,
            reduce::Op::Max => {
                return Err(Error::InvalidArgument {
                    op: "max",
                    message: "max has no gradient in this version; compute it outside autograd (portagrad::no_grad)".into(),
                });
            }
        };
        // Keep the reduced axis as 1 so the gradient broadcasts back over it.
        let gshape: Vec<usize> = if last_axis {
            shape[..shape.len() - 1]
                .iter()
                .copied()
                .chain([1])
                .collect()
        } else {
            vec![]
        };
        Ok(vec![Some(elementwise::expand(
            &g.view_raw(gshape),
            &shape,
            scale,
        )?)])
    });
    Ok(out.record("reduce", &[x], back))
}

fn softmax_op(x: &Tensor, log: bool) -> Result<Tensor> {
    let out = softmax::softmax(x, log)?;
    if !Tensor::should_record(&[x]) {
        return Ok(out);
    }
    let y = out.detach();
    let back: crate::autograd::BackwardFn =
        Box::new(move |g| Ok(vec![Some(softmax::backward(&y, g, log)?)]));
    Ok(out.record(if log { "log_softmax" } else { "softmax" }, &[x], back))
}

impl Tensor {
    /// `self + other` with NumPy broadcasting.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        binary(self, other, elementwise::Op::Add)
    }
    /// `self - other` with NumPy broadcasting.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        binary(self, other, elementwise::Op::Sub)
    }
    /// `self * other` (elementwise) with NumPy broadcasting.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        binary(self, other, elementwise::Op::Mul)
    }
    /// `self / other` (elementwise) with NumPy broadcasting.
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        binary(self, other, elementwise::Op::Div)
    }
    /// `self + s`.
    pub fn add_scalar(&self, s: f32) -> Result<Tensor> {
        unary_op(self, unary::Op::AddScalar, s)
    }
    /// `self * s`.
    pub fn mul_scalar(&self, s: f32) -> Result<Tensor> {
        unary_op(self, unary::Op::MulScalar, s)
    }
    /// `-self`.
    pub fn neg(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Neg, 0.0)
    }
    /// `e^self`.
    pub fn exp(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Exp, 0.0)
    }
    /// Natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Log, 0.0)
    }
    /// Square root.
    pub fn sqrt(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Sqrt, 0.0)
    }
    /// `self^e` elementwise (integer exponents accept negative bases).
    pub fn powf(&self, e: f32) -> Result<Tensor> {
        unary_op(self, unary::Op::PowScalar, e)
    }
    /// `max(self, 0)`.
    pub fn relu(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Relu, 0.0)
    }
    /// GELU, tanh approximation (as GPT-2).
    pub fn gelu(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Gelu, 0.0)
    }
    /// Logistic sigmoid.
    pub fn sigmoid(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Sigmoid, 0.0)
    }
    /// Hyperbolic tangent.
    pub fn tanh(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Tanh, 0.0)
    }
    /// Sum over the last axis: (..., C) -> (...).
    pub fn sum_last(&self) -> Result<Tensor> {
        reduce_op(self, reduce::Op::Sum, true)
    }
    /// Mean over the last axis.
    pub fn mean_last(&self) -> Result<Tensor> {
        reduce_op(self, reduce::Op::Mean, true)
    }
    /// Max over the last axis.
    pub fn max_last(&self) -> Result<Tensor> {
        reduce_op(self, reduce::Op::Max, true)
    }
    /// Sum of all elements, as a shape-`[]` tensor.
    pub fn sum(&self) -> Result<Tensor> {
        reduce_op(self, reduce::Op::Sum, false)
    }
    /// Mean of all elements.
    pub fn mean(&self) -> Result<Tensor> {
        reduce_op(self, reduce::Op::Mean, false)
    }
    /// Max of all elements.
    pub fn max(&self) -> Result<Tensor> {
        reduce_op(self, reduce::Op::Max, false)
    }
    /// Softmax over the last axis (max-subtracted).
    pub fn softmax(&self) -> Result<Tensor> {
        softmax_op(self, false)
    }
    /// Log-softmax over the last axis.
    pub fn log_softmax(&self) -> Result<Tensor> {
        softmax_op(self, true)
    }
    /// Materialised transpose of the last two axes: (..., M, N) -> (..., N, M).
    pub fn transpose(&self) -> Result<Tensor> {
        let out = layout::transpose(self)?;
        let back: crate::autograd::BackwardFn = Box::new(|g| Ok(vec![Some(layout::transpose(g)?)]));
        Ok(out.record("transpose", &[self], back))
    }
    /// Same data, new shape (no copy). One dimension may be `usize::MAX` to be inferred.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let shape = self.reshape_shape(shape)?;
        let out = self.view_raw(shape);
        let orig = self.shape.clone();
        let back: crate::autograd::BackwardFn =
            Box::new(move |g| Ok(vec![Some(g.view_raw(orig.clone()))]));
        Ok(out.record("reshape", &[self], back))
    }
    /// Broadcast to `shape` (NumPy rules), materialised.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        self.expect_dtype("broadcast_to", crate::DType::F32)?;
        let out = elementwise::expand(self, shape, 1.0)?;
        let orig = self.shape.clone();
        let back: crate::autograd::BackwardFn =
            Box::new(move |g| Ok(vec![Some(reduce::sum_to(g, &orig)?)]));
        Ok(out.record("broadcast_to", &[self], back))
    }
    /// Rows of `self` (a (V, D) table) picked by u32 `ids` of any shape: -> (ids..., D).
    ///
    /// The gradient to the table is a deterministic scatter-add: repeated ids are summed in
    /// position order, without float atomics, so the same input gives the same bits. Ids made by
    /// [`Tensor::from_u32`] carry a host copy, and positions are sorted by id on the host (two
    /// small uploads, two dispatches); ids computed on the GPU are sorted on the GPU instead
    /// (about log2(n)^2 / 2 more dispatches, the same bits). The ids get no gradient.
    pub fn gather_rows(&self, ids: &Tensor) -> Result<Tensor> {
        let out = layout::gather_rows(self, ids)?;
        if !Tensor::should_record(&[self]) {
            return Ok(out);
        }
        let vocab = self.shape[0];
        let ids = ids.detach();
        let back: crate::autograd::BackwardFn = Box::new(move |g| {
            let host = ids.host_ids.as_deref();
            Ok(vec![Some(layout::gather_rows_backward(
                g, &ids, host, vocab, 0,
            )?)])
        });
        Ok(out.record("gather_rows", &[self], back))
    }
    /// [`gather_rows`](Self::gather_rows) from one row chunk of a larger table: `self` (R, D)
    /// holds rows `offset .. offset + R`, so id `i` in that range picks `self[i - offset]`, and
    /// any other id gives a row of zeros (and sends no gradient). Summing this over the chunks
    /// of a table is the lookup in the whole table; each chunk's gradient gets only its rows.
    /// Same deterministic scatter-add backward as `gather_rows`.
    pub fn gather_rows_masked(&self, ids: &Tensor, offset: usize) -> Result<Tensor> {
        let offset = u32::try_from(offset).map_err(|_| Error::InvalidArgument {
            op: "gather_rows_masked",
            message: format!("row offset {offset} does not fit u32 ids"),
        })?;
        let out = layout::gather_rows_at(self, ids, Some(offset))?;
        if !Tensor::should_record(&[self]) {
            return Ok(out);
        }
        let rows = self.shape[0];
        let ids = ids.detach();
        let back: crate::autograd::BackwardFn = Box::new(move |g| {
            let host = ids.host_ids.as_deref();
            Ok(vec![Some(layout::gather_rows_backward(
                g, &ids, host, rows, offset,
            )?)])
        });
        Ok(out.record("gather_rows_masked", &[self], back))
    }
    /// Concatenate along the last axis: parts (..., Nᵢ) with equal leading dimensions ->
    /// (..., ΣNᵢ). One copy per part; the backward hands each part its block of columns.
    pub fn concat_last(parts: &[Tensor]) -> Result<Tensor> {
        const OP: &str = "concat_last";
        let Some(first) = parts.first() else {
            return Err(Error::InvalidArgument {
                op: OP,
                message: "no tensors to concatenate".into(),
            });
        };
        let lead = match first.shape.split_last() {
            Some((_, lead)) => lead.to_vec(),
            None => {
                return Err(Error::Shape {
                    op: OP,
                    message: "tensors must have rank >= 1, got a scalar".into(),
                });
            }
        };
        for p in parts {
            p.expect_dtype(OP, crate::DType::F32)?;
            first.same_device(OP, p)?;
            if p.shape.len() != lead.len() + 1 || p.shape[..lead.len()] != lead[..] {
                return Err(Error::Shape {
                    op: OP,
                    message: format!(
                        "leading dimensions must agree: {:?} and {:?}",
                        first.shape, p.shape
                    ),
                });
            }
        }
        let widths: Vec<usize> = parts.iter().map(|p| p.shape[lead.len()]).collect();
        let total: usize = widths.iter().sum();
        let rows: usize = lead.iter().product();
        let mut shape = lead.clone();
        shape.push(total);
        let out = Tensor::empty(&first.dev, OP, &shape, crate::DType::F32)?;
        let mut off = 0;
        for (p, &w) in parts.iter().zip(&widths) {
            layout::copy_cols(p, 0, &out, off, rows, w)?; // (rows, w) -> (rows, total)
            off += w;
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        if !Tensor::should_record(&refs) {
            return Ok(out);
        }
        let wanted: Vec<bool> = parts.iter().map(|p| p.requires_grad).collect();
        let back: crate::autograd::BackwardFn = Box::new(move |g| {
            let mut grads = Vec::with_capacity(widths.len());
            let mut off = 0;
            for (&w, &want) in widths.iter().zip(&wanted) {
                grads.push(if want {
                    let mut s = lead.clone();
                    s.push(w);
                    let gp = Tensor::empty(&g.dev, "concat_last backward", &s, crate::DType::F32)?;
                    layout::copy_cols(g, off, &gp, 0, rows, w)?; // (rows, total) -> (rows, w)
                    Some(gp)
                } else {
                    None
                });
                off += w;
            }
            Ok(grads)
        });
        Ok(out.record(OP, &refs, back))
    }
    /// Flatten to one dimension (no copy).
    pub fn flatten(&self) -> Result<Tensor> {
        self.reshape(&[self.numel()])
    }
    /// Error unless the shape is exactly `want`.
    pub fn expect_shape(&self, op: &'static str, want: &[usize]) -> Result<()> {
        if self.shape() != want {
            return Err(Error::Shape {
                op,
                message: format!("expected shape {want:?}, got {:?}", self.shape()),
            });
        }
        Ok(())
    }
}
