//! Plain f64 CPU references of the layout ops (transpose of the last two axes, row gathers,
//! concatenation along the last axis) and their backward, for the tests and the fuzzer.

/// `x` of `shape` with its last two axes swapped (a batch of row-major matrices).
pub fn transpose(x: &[f64], shape: &[usize]) -> Vec<f64> {
    let r = shape.len();
    let (m, c) = (shape[r - 2], shape[r - 1]);
    let mut out = vec![0.0; x.len()];
    for b in 0..x.len() / (m * c).max(1) {
        for i in 0..m {
            for j in 0..c {
                out[b * m * c + j * m + i] = x[b * m * c + i * c + j];
            }
        }
    }
    out
}

/// The backward of [`transpose`] of an input of `shape`: the gradient transposed back.
pub fn transpose_backward(g: &[f64], shape: &[usize]) -> Vec<f64> {
    let mut swapped = shape.to_vec();
    let r = swapped.len();
    swapped.swap(r - 2, r - 1);
    transpose(g, &swapped)
}

/// Rows `ids` of a table with rows of `d` values.
pub fn gather_rows(table: &[f64], d: usize, ids: &[u32]) -> Vec<f64> {
    ids.iter()
        .flat_map(|&i| table[i as usize * d..(i as usize + 1) * d].iter().copied())
        .collect()
}

/// The backward of [`gather_rows`] into a table of `rows` rows of `d`: repeated ids add up.
pub fn gather_rows_backward(g: &[f64], ids: &[u32], rows: usize, d: usize) -> Vec<f64> {
    gather_rows_masked_backward(g, ids, 0, rows, d)
}

/// A chunk of `rows` rows of `d` holding ids `offset..offset + rows`: row `id - offset` of
/// `table` for each id, zeros for ids outside the chunk.
pub fn gather_rows_masked(
    table: &[f64],
    rows: usize,
    d: usize,
    ids: &[u32],
    offset: usize,
) -> Vec<f64> {
    ids.iter()
        .flat_map(|&i| {
            let r = (i as usize).wrapping_sub(offset);
            (0..d).map(move |c| if r < rows { table[r * d + c] } else { 0.0 })
        })
        .collect()
}

/// The backward of [`gather_rows_masked`]: ids outside the chunk give nothing.
pub fn gather_rows_masked_backward(
    g: &[f64],
    ids: &[u32],
    offset: usize,
    rows: usize,
    d: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; rows * d];
    for (k, &i) in ids.iter().enumerate() {
        let r = (i as usize).wrapping_sub(offset);
        if r < rows {
            for c in 0..d {
                out[r * d + c] += g[k * d + c];
            }
        }
    }
    out
}

/// Parts with `lead` rows each, of `widths[p]` columns, concatenated along the last axis.
pub fn concat_last(parts: &[Vec<f64>], widths: &[usize], lead: usize) -> Vec<f64> {
    (0..lead)
        .flat_map(|r| {
            widths
                .iter()
                .enumerate()
                .flat_map(move |(p, &w)| (0..w).map(move |j| parts[p][r * w + j]))
        })
        .collect()
}

/// The backward of [`concat_last`]: the gradient split back into its parts.
pub fn concat_last_backward(g: &[f64], widths: &[usize], lead: usize) -> Vec<Vec<f64>> {
    let total: usize = widths.iter().sum();
    let mut out: Vec<Vec<f64>> = widths.iter().map(|&w| vec![0.0; lead * w]).collect();
    for r in 0..lead {
        let mut off = 0;
        for (p, &w) in widths.iter().enumerate() {
            out[p][r * w..(r + 1) * w].copy_from_slice(&g[r * total + off..r * total + off + w]);
            off += w;
        }
    }
    out
}
