//! Plain f64 CPU references of the reductions over the last axis (rows of `cols`) and over all
//! elements, with their backward, for the tests and the fuzzer.

/// Sum of each row.
pub fn sum_rows(x: &[f64], cols: usize) -> Vec<f64> {
    x.chunks(cols).map(|r| r.iter().sum()).collect()
}

/// Mean of each row.
pub fn mean_rows(x: &[f64], cols: usize) -> Vec<f64> {
    x.chunks(cols)
        .map(|r| r.iter().sum::<f64>() / cols as f64)
        .collect()
}

/// Maximum of each row (`-inf` for a row of `-inf`).
pub fn max_rows(x: &[f64], cols: usize) -> Vec<f64> {
    x.chunks(cols).map(max).collect()
}

/// Sum of all elements.
pub fn sum(x: &[f64]) -> f64 {
    x.iter().sum()
}

/// Mean of all elements.
pub fn mean(x: &[f64]) -> f64 {
    sum(x) / x.len() as f64
}

/// Maximum of all elements.
pub fn max(x: &[f64]) -> f64 {
    x.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// The backward of [`sum_rows`]: each row's gradient repeated over its `cols` elements.
pub fn sum_rows_backward(g: &[f64], cols: usize) -> Vec<f64> {
    g.iter()
        .flat_map(|&v| std::iter::repeat_n(v, cols))
        .collect()
}

/// The backward of [`mean_rows`]: each row's gradient over `cols`, repeated.
pub fn mean_rows_backward(g: &[f64], cols: usize) -> Vec<f64> {
    g.iter()
        .flat_map(|&v| std::iter::repeat_n(v / cols as f64, cols))
        .collect()
}
