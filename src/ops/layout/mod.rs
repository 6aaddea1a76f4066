//! Layout ops of [`Tensor`]: transpose, reshape, row gathers, concatenation; launcher in
//! `launch.rs`, WGSL in `shaders/layout.wgsl`.

pub(crate) mod launch;
// The f64 CPU reference, public as `testing::reference::layout`.
pub mod reference;

use self::launch as layout;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl Tensor {
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
    /// Rows of `self` (a (V, D) table) picked by u32 `ids` of any shape: -> (ids..., D). An f16
    /// or bf16 table gives f32 rows (its gradient comes back in its dtype).
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
        let (vocab, dtype) = (self.shape[0], self.dtype);
        let ids = ids.detach();
        let back: crate::autograd::BackwardFn = Box::new(move |g| {
            let host = ids.host_ids.as_deref();
            let gt = layout::gather_rows_backward(g, &ids, host, vocab, 0)?;
            Ok(vec![Some(gt.to_dtype(dtype)?)])
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
        let (rows, dtype) = (self.shape[0], self.dtype);
        let ids = ids.detach();
        let back: crate::autograd::BackwardFn = Box::new(move |g| {
            let host = ids.host_ids.as_deref();
            let gt = layout::gather_rows_backward(g, &ids, host, rows, offset)?;
            Ok(vec![Some(gt.to_dtype(dtype)?)])
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

#[cfg(test)]
mod tests {
    use crate::Tensor;
    use crate::testing::{random_vec, shared_device};

    /// Ids as if computed on the GPU: no host copy, no known bound.
    fn gpu_only(ids: &Tensor) -> Tensor {
        Tensor {
            host_ids: None,
            id_bound: None,
            ..ids.clone()
        }
    }

    fn table_grad(table: &Tensor, ids: &Tensor, w: &Tensor) -> Vec<u32> {
        let g = table
            .gather_rows(ids)
            .unwrap()
            .mul(w)
            .unwrap()
            .sum()
            .unwrap()
            .backward()
            .unwrap();
        let v = g.get(table).unwrap().to_vec().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn embedding_backward_gpu_path_matches_host_path_bitwise_and_the_f64_sum() {
        let dev = shared_device();
        // (vocab, dim, positions, distinct ids used, share of positions on id 0)
        for (v, d, n, used, skew) in [
            (1usize, 3usize, 7usize, 1usize, 0.0f32),
            (11, 7, 15, 6, 0.0),
            (1000, 5, 3000, 700, 0.0),
            (300, 33, 4000, 50, 0.9),
            // One id more than 65,535 times: lavapipe ends longer loops early.
            (3, 2, 70_001, 2, 0.97),
        ] {
            let r = random_vec(n, 0.0, 1.0, n as u64);
            let id: Vec<u32> = random_vec(n, 0.0, used as f32, v as u64)
                .iter()
                .zip(&r)
                .map(|(&x, &s)| {
                    if s < skew {
                        0
                    } else {
                        (x as u32).min(used as u32 - 1)
                    }
                })
                .collect();
            let ids = Tensor::from_u32(&dev, &id, &[n]).unwrap();
            let table = Tensor::rand_normal(&dev, &[v, d], 0.0, 1.0, 1)
                .unwrap()
                .with_grad();
            let w = Tensor::rand_normal(&dev, &[n, d], 0.0, 1.0, 2).unwrap();
            let host = table_grad(&table, &ids, &w);
            let gpu = table_grad(&table, &gpu_only(&ids), &w);
            let differ = host.iter().zip(&gpu).filter(|(a, b)| a != b).count();
            let first = host.iter().zip(&gpu).position(|(a, b)| a != b);
            assert_eq!(
                differ, 0,
                "vocab {v}, dim {d}, {n} positions: {differ} elements differ, first at {first:?}"
            );
            assert!(
                gpu == table_grad(&table, &gpu_only(&ids), &w),
                "GPU path repeats"
            );
            if used < v {
                assert!(
                    host[used * d..].iter().all(|&b| b == 0),
                    "unused rows are zero"
                );
            }
            let wv = w.to_vec().unwrap();
            let mut want = vec![0.0f64; v * d];
            for (k, &i) in id.iter().enumerate() {
                for c in 0..d {
                    want[i as usize * d + c] += f64::from(wv[k * d + c]);
                }
            }
            let got: Vec<f32> = gpu.iter().map(|&b| f32::from_bits(b)).collect();
            crate::testing::assert_close("embedding backward", &got, &want, 1e-4, 1e-3);
        }
    }

    #[test]
    fn masked_gather_backward_gpu_path_matches_host_path_and_the_whole_table() {
        let dev = shared_device();
        // A chunk of rows 5..14 of a (20, 4) table; ids cover the whole table, repeated.
        let (v, d, n, off, rows) = (20usize, 4usize, 300usize, 5usize, 9usize);
        let id: Vec<u32> = random_vec(n, 0.0, v as f32, 7)
            .iter()
            .map(|&x| (x as u32).min(v as u32 - 1))
            .collect();
        let ids = Tensor::from_u32(&dev, &id, &[n]).unwrap();
        let full = Tensor::rand_normal(&dev, &[v, d], 0.0, 1.0, 3).unwrap();
        let sel: Vec<u32> = (off as u32..(off + rows) as u32).collect();
        let sel = Tensor::from_u32(&dev, &sel, &[rows]).unwrap();
        let chunk = full.gather_rows(&sel).unwrap().with_grad(); // (rows, D)
        let full = full.with_grad();
        let w = Tensor::rand_normal(&dev, &[n, d], 0.0, 1.0, 4).unwrap();
        let masked = |ids: &Tensor| -> Vec<u32> {
            let g = chunk
                .gather_rows_masked(ids, off)
                .unwrap()
                .mul(&w)
                .unwrap()
                .sum()
                .unwrap()
                .backward()
                .unwrap();
            let v = g.get(&chunk).unwrap().to_vec().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        let host = masked(&ids);
        assert_eq!(host, masked(&gpu_only(&ids)), "GPU sort path, same bits");
        // The chunk's rows of the whole table's gradient, bit for bit.
        let whole = table_grad(&full, &ids, &w);
        assert_eq!(host, whole[off * d..(off + rows) * d]);
        // Forward: the chunk's rows where the id falls in it, zeros elsewhere.
        let got = chunk
            .gather_rows_masked(&ids, off)
            .unwrap()
            .to_vec()
            .unwrap();
        let fv = full.to_vec().unwrap();
        for (k, &i) in id.iter().enumerate() {
            let i = i as usize;
            let want = if (off..off + rows).contains(&i) {
                &fv[i * d..(i + 1) * d]
            } else {
                &[0.0; 4][..]
            };
            assert_eq!(&got[k * d..(k + 1) * d], want, "position {k}, id {i}");
        }
    }
}
