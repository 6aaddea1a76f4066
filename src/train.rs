//! Training loop: datasets, a seeded data loader, [`fit`], [`evaluate`] and [`predict`].
//!
//! The task follows from the targets: binary 0/1 targets train with binary cross-entropy on
//! logits (the model's last layer outputs one logit; `sigmoid` is folded into the loss) and
//! report binary accuracy; class ids train with sparse categorical cross-entropy (softmax
//! folded in) and report accuracy; real-valued targets train with mean squared error.
//!
//! A training step records forward, backward and the fused optimizer update and submits once;
//! the loss and metric of every step stay on the device in a small log that is read back at the
//! end of the epoch (and every [`FitConfig::check_every`] steps), so the GPU is never waited on
//! per step. A NaN or infinite loss stops training with [`Error::NonFiniteLoss`] naming the
//! epoch, batch and optimizer step where it first appeared.

use crate::time::Instant;
use std::io::IsTerminal;

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::io::csv::{Standardizer, Table};
use crate::nn::Module;
use crate::ops::copy::launch::{copy_into, log_pair};
use crate::optim::Optimizer;
use crate::runtime::Device;
use crate::tensor::Tensor;

/// What the model is asked to predict, decided by the targets.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// One 0/1 (or probability) target per row; the model outputs one logit.
    Binary(Vec<f32>),
    /// A class id per row; the model outputs `n_classes` logits.
    Classes {
        /// Class id of each row.
        ids: Vec<u32>,
        /// Number of classes (logits per row).
        n_classes: usize,
    },
    /// `dim` real values per row (regression, mean squared error).
    Values {
        /// Row-major targets.
        values: Vec<f32>,
        /// Values per row.
        dim: usize,
    },
}

impl Targets {
    fn rows(&self) -> usize {
        match self {
            Targets::Binary(v) => v.len(),
            Targets::Classes { ids, .. } => ids.len(),
            Targets::Values { values, dim } => values.len() / (*dim).max(1),
        }
    }

    fn subset(&self, idx: &[usize]) -> Targets {
        match self {
            Targets::Binary(v) => Targets::Binary(idx.iter().map(|&i| v[i]).collect()),
            Targets::Classes { ids, n_classes } => Targets::Classes {
                ids: idx.iter().map(|&i| ids[i]).collect(),
                n_classes: *n_classes,
            },
            Targets::Values { values, dim } => Targets::Values {
                values: idx
                    .iter()
                    .flat_map(|&i| values[i * dim..(i + 1) * dim].iter().copied())
                    .collect(),
                dim: *dim,
            },
        }
    }

    /// Name of the metric reported next to the loss.
    pub fn metric_name(&self) -> &'static str {
        match self {
            Targets::Values { .. } => "mse",
            _ => "accuracy",
        }
    }

    /// Outputs per row the model must produce.
    pub fn outputs(&self) -> usize {
        match self {
            Targets::Binary(_) => 1,
            Targets::Classes { n_classes, .. } => *n_classes,
            Targets::Values { dim, .. } => *dim,
        }
    }
}

/// Rows of features with their targets, on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    x: Vec<f32>,
    n_features: usize,
    targets: Targets,
}

impl Dataset {
    /// `x` is row-major, `rows x n_features`; `targets` has one entry (or `dim`) per row.
    pub fn new(x: Vec<f32>, n_features: usize, targets: Targets) -> Result<Dataset> {
        let bad = |message: String| {
            Err(Error::Shape {
                op: "Dataset::new",
                message,
            })
        };
        if n_features == 0 || !x.len().is_multiple_of(n_features) {
            return bad(format!(
                "{} feature values are not whole rows of {n_features}",
                x.len()
            ));
        }
        let rows = x.len() / n_features;
        if let Targets::Values { values, dim } = &targets
            && (*dim == 0 || !values.len().is_multiple_of(*dim))
        {
            return bad(format!(
                "{} target values are not whole rows of {dim}",
                values.len()
            ));
        }
        if targets.rows() != rows {
            return bad(format!(
                "{rows} rows of features but {} targets",
                targets.rows()
            ));
        }
        match &targets {
            Targets::Classes { ids, n_classes } => {
                if let Some(&bad_id) = ids.iter().find(|&&i| i as usize >= *n_classes) {
                    return Err(Error::InvalidArgument {
                        op: "Dataset::new",
                        message: format!("class id {bad_id} is not below the {n_classes} classes"),
                    });
                }
            }
            Targets::Binary(v) => {
                if let Some(b) = v.iter().find(|t| !(0.0..=1.0).contains(*t)) {
                    return Err(Error::InvalidArgument {
                        op: "Dataset::new",
                        message: format!("binary target {b} is outside [0, 1]"),
                    });
                }
            }
            Targets::Values { .. } => {}
        }
        Ok(Dataset {
            x,
            n_features,
            targets,
        })
    }

    /// A classification dataset from a CSV table: two classes become [`Targets::Binary`],
    /// more become [`Targets::Classes`].
    pub fn from_table(t: &Table) -> Result<Dataset> {
        let targets = if t.n_classes() == 2 {
            Targets::Binary(t.labels.iter().map(|&l| l as f32).collect())
        } else {
            Targets::Classes {
                ids: t.labels.clone(),
                n_classes: t.n_classes(),
            }
        };
        Dataset::new(t.features.clone(), t.n_features, targets)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.x.len() / self.n_features
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }

    /// Features per row.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Row-major features.
    pub fn features(&self) -> &[f32] {
        &self.x
    }

    /// The targets.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// The rows at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let d = self.n_features;
        Dataset {
            x: idx
                .iter()
                .flat_map(|&i| self.x[i * d..(i + 1) * d].iter().copied())
                .collect(),
            n_features: d,
            targets: self.targets.subset(idx),
        }
    }

    /// Shuffle the rows with `seed` and hold out `fraction` of them: `(rest, held_out)`.
    pub fn split(&self, fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        let n = self.len();
        let k = (n as f64 * fraction).round() as usize;
        if !(0.0..1.0).contains(&fraction) || (fraction > 0.0 && (k == 0 || k >= n)) {
            return Err(Error::InvalidArgument {
                op: "Dataset::split",
                message: format!(
                    "cannot hold out {fraction} of {n} rows (need at least one row on each side)"
                ),
            });
        }
        let order = shuffled(n, seed);
        Ok((self.subset(&order[..n - k]), self.subset(&order[n - k..])))
    }

    /// The last `fraction` of the rows, unshuffled, as Keras's `validation_split`:
    /// `(first, last)`.
    pub fn split_tail(&self, fraction: f64) -> Result<(Dataset, Dataset)> {
        let n = self.len();
        let k = (n as f64 * fraction).floor() as usize;
        if !(0.0..1.0).contains(&fraction) || (fraction > 0.0 && (k == 0 || k >= n)) {
            return Err(Error::InvalidArgument {
                op: "Dataset::split_tail",
                message: format!(
                    "cannot hold out {fraction} of {n} rows (need at least one row on each side)"
                ),
            });
        }
        let idx: Vec<usize> = (0..n).collect();
        Ok((self.subset(&idx[..n - k]), self.subset(&idx[n - k..])))
    }

    /// Standardisation statistics of this dataset's features.
    pub fn standardizer(&self) -> Result<Standardizer> {
        Standardizer::fit(&self.x, self.n_features)
    }

    /// Apply `s` to the features in place (use the training set's statistics for every split).
    pub fn standardize(&mut self, s: &Standardizer) -> Result<()> {
        s.transform(&mut self.x)
    }
}

/// `0..n` in a seeded random order (Fisher-Yates).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = crate::rng::SplitMix64::new(seed);
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// One batch on the device.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Features, (rows, n_features).
    pub x: Tensor,
    /// Targets: (rows, 1) f32 for binary, (rows) u32 for classes, (rows, dim) f32 for values.
    pub y: Tensor,
    /// Rows in this batch (the last batch of an epoch may be short).
    pub rows: usize,
}

/// Batches of a dataset in a fixed or seeded-shuffled order, the last one possibly short.
pub struct DataLoader<'a> {
    dev: Device,
    data: &'a Dataset,
    batch_size: usize,
    order: Vec<usize>,
    pos: usize,
}

impl<'a> DataLoader<'a> {
    /// Batches of `batch_size` rows; `shuffle_seed: Some(s)` visits the rows in an order drawn
    /// from `s` (the same seed, the same order), `None` in file order.
    pub fn new(
        dev: &Device,
        data: &'a Dataset,
        batch_size: usize,
        shuffle_seed: Option<u64>,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument {
                op: "DataLoader::new",
                message: "batch size must be at least 1".into(),
            });
        }
        let order = match shuffle_seed {
            Some(s) => shuffled(data.len(), s),
            None => (0..data.len()).collect(),
        };
        Ok(DataLoader {
            dev: dev.clone(),
            data,
            batch_size,
            order,
            pos: 0,
        })
    }

    /// Batches per pass, counting a short last one.
    pub fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    /// Row indices of the batches, in order.
    pub fn batch_indices(&self) -> impl Iterator<Item = &[usize]> {
        self.order.chunks(self.batch_size)
    }

    fn make(&self, idx: &[usize]) -> Result<Batch> {
        let d = self.data.n_features;
        let rows = idx.len();
        let mut x = Vec::with_capacity(rows * d);
        for &i in idx {
            x.extend_from_slice(&self.data.x[i * d..(i + 1) * d]);
        }
        let x = Tensor::from_slice(&self.dev, &x, &[rows, d])?;
        let y = match &self.data.targets {
            Targets::Binary(v) => {
                let y: Vec<f32> = idx.iter().map(|&i| v[i]).collect();
                Tensor::from_slice(&self.dev, &y, &[rows, 1])?
            }
            Targets::Classes { ids, .. } => {
                let y: Vec<u32> = idx.iter().map(|&i| ids[i]).collect();
                Tensor::from_u32(&self.dev, &y, &[rows])?
            }
            Targets::Values { values, dim } => {
                let y: Vec<f32> = idx
                    .iter()
                    .flat_map(|&i| values[i * dim..(i + 1) * dim].iter().copied())
                    .collect();
                Tensor::from_slice(&self.dev, &y, &[rows, *dim])?
            }
        };
        Ok(Batch { x, y, rows })
    }
}

impl Iterator for DataLoader<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.order.len());
        let b = self.make(&self.order[self.pos..end]);
        self.pos = end;
        Some(b)
    }
}

/// Loss and metric of model outputs against a batch's targets (both shape-`[]` tensors).
pub fn loss_and_metric(targets: &Targets, out: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
    let want = targets.outputs();
    if out.shape().last() != Some(&want) {
        return Err(Error::Shape {
            op: "fit",
            message: format!(
                "the model outputs {:?} per batch, the targets need {want} value(s) per row ({})",
                out.shape(),
                match targets {
                    Targets::Binary(_) => "one logit for binary classification".to_string(),
                    Targets::Classes { n_classes, .. } =>
                        format!("{n_classes} logits, one per class"),
                    Targets::Values { dim, .. } => format!("{dim} regression outputs"),
                }
            ),
        });
    }
    match targets {
        Targets::Binary(_) => {
            let loss = out.bce_with_logits(y)?;
            let metric = no_grad_do(|| out.binary_accuracy(y))?;
            Ok((loss, metric))
        }
        Targets::Classes { .. } => {
            let loss = out.cross_entropy(y, None)?;
            let metric = no_grad_do(|| out.accuracy(y))?;
            Ok((loss, metric))
        }
        Targets::Values { .. } => {
            let loss = out.mse_loss(y)?;
            Ok((loss.clone(), loss.detach()))
        }
    }
}

fn no_grad_do<R>(f: impl FnOnce() -> R) -> R {
    let _g = no_grad();
    f()
}

/// One optimisation step on a batch: forward, loss, backward, fused update. Records the work
/// and submits it without waiting; returns the loss and metric tensors (read them only when
/// needed: reading waits for the GPU). With loss scaling on the optimizer
/// ([`Optimizer::enable_loss_scaling`]) the backward runs on the scaled loss; the returned loss
/// is unscaled.
pub fn train_step(
    model: &dyn Module,
    opt: &mut Optimizer,
    targets: &Targets,
    batch: &Batch,
) -> Result<(Tensor, Tensor)> {
    let out = model.forward(&batch.x)?;
    let (loss, metric) = loss_and_metric(targets, &out, &batch.y)?;
    let grads = opt.scale_loss(&loss)?.backward()?;
    opt.step(&grads)?;
    Ok((loss.detach(), metric))
}

/// Stop when the monitored loss (validation loss when there is a validation split, else the
/// training loss) has not improved by `min_delta` for `patience` epochs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// Smallest decrease that counts as an improvement.
    pub min_delta: f32,
    /// Put back the parameters of the best epoch when stopping (or at the end).
    pub restore_best: bool,
}

impl EarlyStopping {
    /// Stop after `patience` epochs without improvement, restoring the best parameters.
    pub fn new(patience: usize) -> Self {
        EarlyStopping {
            patience,
            min_delta: 0.0,
            restore_best: true,
        }
    }
}

/// Whether to draw a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Only when standard output is a terminal.
    Auto,
    /// Never.
    Never,
}

/// Settings of [`fit`]; the defaults are Keras's (`epochs` 10, `batch_size` 32, no
/// validation, shuffled every epoch).
#[derive(Clone, Debug, PartialEq)]
pub struct FitConfig {
    /// Passes over the training rows.
    pub epochs: usize,
    /// Rows per step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Fraction of the rows (the last ones, unshuffled, as Keras) kept for validation.
    pub validation_split: f64,
    /// Seed of the per-epoch shuffles (epoch `e` uses `seed + e`); `None`: no shuffling.
    pub shuffle_seed: Option<u64>,
    /// Optional early stopping.
    pub early_stopping: Option<EarlyStopping>,
    /// Progress bar.
    pub progress: Progress,
    /// Print one line per epoch to standard output.
    pub verbose: bool,
    /// Also read the step log (and check for NaN) every this many steps within an epoch.
    pub check_every: usize,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            epochs: 10,
            batch_size: 32,
            validation_split: 0.0,
            shuffle_seed: Some(0),
            early_stopping: None,
            progress: Progress::Auto,
            verbose: false,
            check_every: 200,
        }
    }
}

/// Loss and metric of one epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStats {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch's rows.
    pub loss: f32,
    /// Mean training metric (accuracy; MSE for regression).
    pub metric: f32,
    /// Validation loss, when there is a validation split.
    pub val_loss: Option<f32>,
    /// Validation metric.
    pub val_metric: Option<f32>,
    /// Wall-clock seconds of the epoch, validation included.
    pub seconds: f64,
}

/// What [`fit`] did, epoch by epoch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// One entry per epoch run.
    pub epochs: Vec<EpochStats>,
    /// Name of the metric (`accuracy` or `mse`).
    pub metric_name: String,
    /// True when early stopping ended training before the last epoch.
    pub stopped_early: bool,
    /// Epoch (from 1) whose parameters the model holds after early stopping with
    /// `restore_best`.
    pub best_epoch: Option<usize>,
}

/// Weighted means of a (steps, 2) device log; also the first non-finite loss.
fn summarise(log: &[f32], sizes: &[usize]) -> (f32, f32, Option<(usize, f32)>) {
    let (mut l, mut m, mut n) = (0f64, 0f64, 0f64);
    let mut bad = None;
    for (i, &s) in sizes.iter().enumerate() {
        let (li, mi) = (log[2 * i], log[2 * i + 1]);
        if !li.is_finite() && bad.is_none() {
            bad = Some((i, li));
        }
        l += f64::from(li) * s as f64;
        m += f64::from(mi) * s as f64;
        n += s as f64;
    }
    ((l / n.max(1.0)) as f32, (m / n.max(1.0)) as f32, bad)
}

/// Train `model` on `data` with `opt`. See the [module docs](self) for the loss that the targets
/// select and how steps avoid waiting on the GPU.
pub fn fit(
    model: &dyn Module,
    opt: &mut Optimizer,
    data: &Dataset,
    cfg: &FitConfig,
) -> Result<History> {
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err(Error::InvalidArgument {
            op: "fit",
            message: format!(
                "epochs ({}) and batch size ({}) must be at least 1",
                cfg.epochs, cfg.batch_size
            ),
        });
    }
    let dev = model
        .parameters()
        .first()
        .map(|(_, t)| t.device().clone())
        .ok_or_else(|| Error::InvalidArgument {
            op: "fit",
            message: "the model has no parameters".into(),
        })?;
    let (train, val) = if cfg.validation_split > 0.0 {
        let (t, v) = data.split_tail(cfg.validation_split)?;
        (t, Some(v))
    } else {
        (data.clone(), None)
    };
    if train.is_empty() {
        // As `evaluate`: without this, every epoch "trains" on nothing and reports a loss of 0.
        return Err(Error::InvalidArgument {
            op: "fit",
            message: format!("no rows to train on ({} rows in the dataset)", data.len()),
        });
    }
    let mut history = History {
        metric_name: data.targets.metric_name().to_string(),
        ..History::default()
    };
    let steps = train.len().div_ceil(cfg.batch_size);
    let log = Tensor::zeros(&dev, &[steps, 2])?;
    let show = cfg.progress == Progress::Auto && std::io::stdout().is_terminal();
    let bar = if show {
        let b = indicatif::ProgressBar::with_draw_target(
            Some(steps as u64),
            indicatif::ProgressDrawTarget::stdout(),
        )
        .with_prefix(format!("1/{}", cfg.epochs));
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
        {
            b.set_style(style.progress_chars("=> "));
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut best: Option<(f32, usize, Vec<Tensor>)> = None;
    let mut since_best = 0usize;
    let params = model.parameters();
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        model.set_training(true);
        bar.reset();
        bar.set_prefix(format!("{epoch}/{}", cfg.epochs));
        let loader = DataLoader::new(
            &dev,
            &train,
            cfg.batch_size,
            cfg.shuffle_seed.map(|s| s.wrapping_add(epoch as u64)),
        )?;
        let step0 = opt.step_count();
        let mut sizes = Vec::with_capacity(steps);
        let check = |sizes: &[usize], upto: usize| -> Result<(f32, f32)> {
            let host = log.to_vec()?;
            let (l, m, bad) = summarise(&host[..2 * upto], &sizes[..upto]);
            if let Some((i, value)) = bad {
                return Err(Error::NonFiniteLoss {
                    op: "fit",
                    epoch,
                    batch: i + 1,
                    step: step0 + i as u64 + 1,
                    value,
                });
            }
            Ok((l, m))
        };
        for (i, batch) in loader.enumerate() {
            let batch = batch?;
            let (loss, metric) = train_step(model, opt, &train.targets, &batch)?;
            log_pair(&log, i, &loss, &metric)?;
            sizes.push(batch.rows);
            // Hand this step to the GPU now, so it runs while the next one is recorded.
            dev.flush()?;
            bar.inc(1);
            if cfg.check_every > 0 && (i + 1) % cfg.check_every == 0 && i + 1 < steps {
                let (l, _) = check(&sizes, i + 1)?;
                bar.set_message(format!("loss {l:.4}"));
            }
        }
        let (loss, metric) = check(&sizes, sizes.len())?;
        let (val_loss, val_metric) = match &val {
            Some(v) => {
                model.set_training(false);
                let (l, m) = evaluate(model, v, cfg.batch_size)?;
                (Some(l), Some(m))
            }
            None => (None, None),
        };
        let stats = EpochStats {
            epoch,
            loss,
            metric,
            val_loss,
            val_metric,
            seconds: t0.elapsed().as_secs_f64(),
        };
        if cfg.verbose {
            bar.suspend(|| println!("{}", format_epoch(&stats, cfg.epochs, &history.metric_name)));
        }
        history.epochs.push(stats);
        if let Some(es) = cfg.early_stopping {
            let monitored = val_loss.unwrap_or(loss);
            let improved = best
                .as_ref()
                .is_none_or(|(b, ..)| monitored < b - es.min_delta);
            if improved {
                since_best = 0;
                let snapshot = if es.restore_best {
                    let _g = no_grad();
                    params
                        .iter()
                        .map(|(_, p)| p.mul_scalar(1.0))
                        .collect::<Result<Vec<_>>>()?
                } else {
                    Vec::new()
                };
                best = Some((monitored, epoch, snapshot));
            } else {
                since_best += 1;
                if since_best >= es.patience {
                    history.stopped_early = epoch < cfg.epochs;
                    break;
                }
            }
        }
    }
    bar.finish_and_clear();
    model.set_training(true);
    if let (Some(es), Some((_, e, snapshot))) = (cfg.early_stopping, best)
        && es.restore_best
        && e != history.epochs.len()
    {
        for ((_, p), s) in params.iter().zip(&snapshot) {
            copy_into(p, s)?;
        }
        history.best_epoch = Some(e);
    }
    Ok(history)
}

/// One line of training output: `epoch 3/10 - 0.21 s - loss 0.1234 - accuracy 0.9560 - ...`.
pub fn format_epoch(s: &EpochStats, epochs: usize, metric: &str) -> String {
    let mut line = format!(
        "epoch {}/{epochs} - {:.2} s - loss {:.4} - {metric} {:.4}",
        s.epoch, s.seconds, s.loss, s.metric
    );
    if let (Some(l), Some(m)) = (s.val_loss, s.val_metric) {
        line += &format!(" - val_loss {l:.4} - val_{metric} {m:.4}");
    }
    line
}

/// Mean loss and metric of `model` over `data` (inference mode: no graph, dropout off), in
/// batches of `batch_size`, with one readback at the end.
pub fn evaluate(model: &dyn Module, data: &Dataset, batch_size: usize) -> Result<(f32, f32)> {
    let dev = model
        .parameters()
        .first()
        .map(|(_, t)| t.device().clone())
        .ok_or_else(|| Error::InvalidArgument {
            op: "evaluate",
            message: "the model has no parameters".into(),
        })?;
    if data.is_empty() {
        return Err(Error::InvalidArgument {
            op: "evaluate",
            message: "no rows to evaluate".into(),
        });
    }
    let _g = no_grad();
    let loader = DataLoader::new(&dev, data, batch_size, None)?;
    let log = Tensor::zeros(&dev, &[loader.num_batches(), 2])?;
    let mut sizes = Vec::new();
    for (i, batch) in loader.enumerate() {
        let batch = batch?;
        let out = model.forward(&batch.x)?;
        let (loss, metric) = loss_and_metric(&data.targets, &out, &batch.y)?;
        log_pair(&log, i, &loss, &metric)?;
        sizes.push(batch.rows);
    }
    let (l, m, _) = summarise(&log.to_vec()?, &sizes);
    Ok((l, m))
}

/// The model's raw outputs (logits for classification) for row-major `x` with `n_features`
/// columns, in inference mode: `rows x outputs` values.
pub fn predict(
    model: &dyn Module,
    dev: &Device,
    x: &[f32],
    n_features: usize,
    batch_size: usize,
) -> Result<Vec<f32>> {
    if n_features == 0 || !x.len().is_multiple_of(n_features) || batch_size == 0 {
        return Err(Error::Shape {
            op: "predict",
            message: format!(
                "{} values are not whole rows of {n_features} (batch size {batch_size})",
                x.len()
            ),
        });
    }
    let _g = no_grad();
    let mut out = Vec::new();
    for rows in x.chunks(batch_size * n_features) {
        let xt = Tensor::from_slice(dev, rows, &[rows.len() / n_features, n_features])?;
        out.extend(model.forward(&xt)?.to_vec()?);
    }
    Ok(out)
}

/// Class predictions from [`predict`]'s outputs: `logit > 0` for one output per row, the
/// argmax otherwise.
pub fn classes_from_outputs(outputs: &[f32], per_row: usize) -> Vec<u32> {
    if per_row == 1 {
        return outputs.iter().map(|&z| u32::from(z > 0.0)).collect();
    }
    outputs
        .chunks(per_row)
        .map(|r| {
            let mut best = 0;
            for (i, &v) in r.iter().enumerate() {
                if v > r[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}
