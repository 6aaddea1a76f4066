//! Tabular data from CSV files, for classification: numeric feature columns, the label in the
//! last column.
//!
//! Two layouts are recognised from the first line:
//! - scikit-learn's bundled form: `n_samples,n_features,class names...` (the first two fields
//!   are integers), then rows of `n_features` numbers and an integer class id;
//! - a plain CSV with a header row of column names.
//!
//! Labels may be numbers (class ids or any distinct values) or text (`setosa`); the distinct
//! labels, sorted, become classes `0..k`. Every problem is an error that names the file and,
//! where it applies, the line and column: a missing or empty file, a non-numeric feature cell,
//! a row with the wrong number of fields, fewer than two classes, a sample count that
//! disagrees with the scikit-learn header. Nothing panics on bad input.

use std::path::Path;

use crate::error::{Error, Result};

/// A table read from a CSV file.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// Row-major features, `rows x n_features`.
    pub features: Vec<f32>,
    /// Class id of each row, in `0..class_names.len()`.
    pub labels: Vec<u32>,
    /// Feature column names (`x0`, `x1`, ... for the scikit-learn form).
    pub feature_names: Vec<String>,
    /// Name of each class id: from the scikit-learn header, else the label as written.
    pub class_names: Vec<String>,
    /// Number of feature columns.
    pub n_features: usize,
}

impl Table {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no rows (never the case for a table [`read_csv`] returns).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.class_names.len()
    }
}

/// Most classes a scikit-learn-form file may imply without naming them (a class id of
/// `u32::MAX` would otherwise make four billion class names).
const MAX_UNNAMED_CLASSES: usize = 1 << 16;

fn err(path: &Path, message: String) -> Error {
    Error::InvalidArgument {
        op: "read_csv",
        message: format!("{}: {message}", path.display()),
    }
}

/// Split one CSV line into fields: commas separate, double quotes group (`""` is a quote),
/// surrounding spaces are trimmed.
fn split_fields(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    // A quoted field has ended: only spaces may follow before the next comma.
    let mut closed = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted => {
                if chars.peek() == Some(&'"') {
                    cur.push('"');
                    chars.next();
                } else {
                    quoted = false;
                    closed = true;
                }
            }
            '"' if cur.trim().is_empty() && !closed => {
                cur.clear();
                quoted = true;
            }
            ',' if !quoted => {
                closed = false;
                fields.push(std::mem::take(&mut cur).trim().to_string())
            }
            c if closed && !c.is_whitespace() => {
                return Err(format!("{c:?} follows a closing quote"));
            }
            _ => cur.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed".into());
    }
    fields.push(cur.trim().to_string());
    Ok(fields)
}

fn parse_num(s: &str) -> Option<f32> {
    let v: f32 = s.parse().ok()?;
    v.is_finite().then_some(v)
}

/// Read a classification table from `path` (see the [module docs](self) for the layouts).
pub fn read_csv(path: impl AsRef<Path>) -> Result<Table> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| err(path, format!("not UTF-8 text ({e})")))?;
    parse_csv(path, &text)
}

/// [`read_csv`] on text already in memory; `path` is only used in messages.
pub fn parse_csv(path: &Path, text: &str) -> Result<Table> {
    // (line number, content) of non-blank lines.
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            (
                i + 1,
                l.trim_start_matches('\u{feff}').trim_end_matches('\r'),
            )
        })
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((hline, header)) = lines.next() else {
        return Err(err(path, "the file is empty".into()));
    };
    let head = split_fields(header).map_err(|e| err(path, format!("line {hline}: {e}")))?;
    let sklearn =
        head.len() >= 2 && head[0].parse::<usize>().is_ok() && head[1].parse::<usize>().is_ok();
    let (n_features, feature_names, header_classes, expected_rows) = if sklearn {
        let n: usize = head[1].parse().unwrap_or(0);
        if n == 0 {
            return Err(err(
                path,
                format!("line {hline}: the header declares 0 features"),
            ));
        }
        // Each feature takes at least two bytes of a row ("0,"): a count past that is a broken
        // header (and would otherwise make that many names before the first row is read).
        if n > text.len() / 2 {
            return Err(err(
                path,
                format!(
                    "line {hline}: the header declares {n} features, more than a file of {} bytes can hold",
                    text.len()
                ),
            ));
        }
        let names = (0..n).map(|i| format!("x{i}")).collect();
        let classes: Vec<String> = head[2..].to_vec();
        (n, names, Some(classes), head[0].parse::<usize>().ok())
    } else {
        if head.len() < 2 {
            return Err(err(
                path,
                format!(
                    "line {hline}: the header has {} column; need at least one feature and a label",
                    head.len()
                ),
            ));
        }
        (head.len() - 1, head[..head.len() - 1].to_vec(), None, None)
    };
    let width = n_features + 1;
    let mut features = Vec::new();
    let mut raw_labels: Vec<(usize, String)> = Vec::new();
    for (ln, line) in lines {
        let fields = split_fields(line).map_err(|e| err(path, format!("line {ln}: {e}")))?;
        if fields.len() != width {
            return Err(err(
                path,
                format!(
                    "line {ln}: {} fields, expected {width} ({n_features} features and a label)",
                    fields.len()
                ),
            ));
        }
        for (c, f) in fields[..n_features].iter().enumerate() {
            match parse_num(f) {
                Some(v) => features.push(v),
                None => {
                    return Err(err(
                        path,
                        format!(
                            "line {ln}, column {} ({}): {f:?} is not a finite number",
                            c + 1,
                            feature_names[c]
                        ),
                    ));
                }
            }
        }
        if fields[n_features].is_empty() {
            return Err(err(
                path,
                format!("line {ln}, column {width} (label): the label is empty"),
            ));
        }
        raw_labels.push((ln, fields[n_features].clone()));
    }
    if raw_labels.is_empty() {
        return Err(err(path, "the file has a header but no data rows".into()));
    }
    if let Some(n) = expected_rows
        && n != raw_labels.len()
    {
        return Err(err(
            path,
            format!(
                "the header declares {n} samples but the file has {} rows",
                raw_labels.len()
            ),
        ));
    }

    let (labels, class_names) = match header_classes {
        Some(names) => {
            // scikit-learn form: integer class ids, named by the header when it names them.
            let mut ids = Vec::with_capacity(raw_labels.len());
            for (ln, l) in &raw_labels {
                let bound = if names.is_empty() {
                    MAX_UNNAMED_CLASSES
                } else {
                    names.len()
                };
                let id = l.parse::<u32>().ok().filter(|&id| (id as usize) < bound);
                match id {
                    Some(id) => ids.push(id),
                    None => {
                        return Err(err(
                            path,
                            format!(
                                "line {ln}, column {width} (label): {l:?} is not a class id in 0..{bound}"
                            ),
                        ));
                    }
                }
            }
            let k = ids
                .iter()
                .max()
                .map_or(0, |&m| m as usize + 1)
                .max(names.len());
            let names = if names.is_empty() {
                (0..k).map(|i| i.to_string()).collect()
            } else {
                names
            };
            (ids, names)
        }
        None => {
            // Plain form: distinct labels, sorted (numerically when all are numbers; -0 is 0).
            let key = |l: &str| l.parse::<f64>().unwrap_or(0.0) + 0.0;
            let numeric = raw_labels.iter().all(|(_, l)| l.parse::<f64>().is_ok());
            let mut distinct: Vec<String> = raw_labels.iter().map(|(_, l)| l.clone()).collect();
            if numeric {
                distinct.sort_by(|a, b| key(a).total_cmp(&key(b)));
                distinct.dedup_by(|a, b| key(a).total_cmp(&key(b)).is_eq());
            } else {
                distinct.sort();
                distinct.dedup();
            }
            // Binary search in the sorted classes (a linear scan per row is quadratic in the
            // number of distinct labels: a file of unique labels would take minutes).
            let ids = raw_labels
                .iter()
                .map(|(_, l)| {
                    let found = if numeric {
                        let x = key(l);
                        distinct.binary_search_by(|d| key(d).total_cmp(&x))
                    } else {
                        distinct.binary_search(l)
                    };
                    found.unwrap_or(0) as u32
                })
                .collect();
            (ids, distinct)
        }
    };
    let mut seen = vec![false; class_names.len()];
    for &l in &labels {
        seen[l as usize] = true;
    }
    let present = seen.iter().filter(|&&s| s).count();
    if present < 2 {
        return Err(err(
            path,
            format!(
                "every row has the label {:?}: classification needs at least two classes",
                class_names[labels[0] as usize]
            ),
        ));
    }
    Ok(Table {
        features,
        labels,
        feature_names,
        class_names,
        n_features,
    })
}

/// Per-feature mean and standard deviation, from training rows; applied to any rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    /// Mean of each feature.
    pub mean: Vec<f32>,
    /// Standard deviation of each feature (1 for a constant feature, so it maps to 0).
    pub std: Vec<f32>,
}

impl Standardizer {
    /// Statistics of row-major `features` with `n_features` columns (population std, as
    /// scikit-learn's `StandardScaler`), accumulated in f64.
    pub fn fit(features: &[f32], n_features: usize) -> Result<Standardizer> {
        if n_features == 0 || features.is_empty() || !features.len().is_multiple_of(n_features) {
            return Err(Error::Shape {
                op: "Standardizer::fit",
                message: format!(
                    "{} values are not a non-empty whole number of rows of {n_features}",
                    features.len()
                ),
            });
        }
        let rows = features.len() / n_features;
        let mut mean = vec![0f64; n_features];
        for r in features.chunks_exact(n_features) {
            for (m, &x) in mean.iter_mut().zip(r) {
                *m += f64::from(x);
            }
        }
        mean.iter_mut().for_each(|m| *m /= rows as f64);
        let mut var = vec![0f64; n_features];
        for r in features.chunks_exact(n_features) {
            for ((v, &x), m) in var.iter_mut().zip(r).zip(&mean) {
                *v += (f64::from(x) - m).powi(2);
            }
        }
        let std = var
            .iter()
            .map(|v| {
                let s = (v / rows as f64).sqrt();
                if s > 1e-12 { s as f32 } else { 1.0 }
            })
            .collect();
        Ok(Standardizer {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        })
    }

    /// Standardise row-major `features` in place: `(x - mean) / std` per column.
    pub fn transform(&self, features: &mut [f32]) -> Result<()> {
        let d = self.mean.len();
        if d == 0 || !features.len().is_multiple_of(d) {
            return Err(Error::Shape {
                op: "Standardizer::transform",
                message: format!("{} values are not whole rows of {d}", features.len()),
            });
        }
        for r in features.chunks_exact_mut(d) {
            for ((x, m), s) in r.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = (*x - m) / s;
            }
        }
        Ok(())
    }
}
