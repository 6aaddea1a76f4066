//! Trains the breast-cancer classifier of `examples/classify.rs` in a browser page on WebGPU.
//!
//! `fit` and `evaluate` read their step logs back with blocking calls, which never complete in
//! a page, so this runs its own loop of `train_step`s: the epoch's loss and accuracy are summed
//! on the device and read back once per epoch with `item_async`.

use std::fmt::Display;
use std::path::Path;

use portagrad::io::csv::parse_csv;
use portagrad::nn::{self, Module};
use portagrad::optim::Optimizer;
use portagrad::train::{DataLoader, Dataset, loss_and_metric, train_step};
use portagrad::{Activation, Device, DeviceOptions, Tensor, no_grad};
use wasm_bindgen::prelude::*;

const CSV: &str = include_str!("../../data/breast_cancer.csv");
// The example's defaults.
const SEED: u64 = 42;
const TEST_FRACTION: f64 = 0.2;
const VAL_SPLIT: f64 = 0.2;
const HIDDEN: usize = 64;
const LAYERS: usize = 2;
const BATCH: usize = 32;
const LR: f64 = 1e-3;
const EPOCHS: usize = 10;

#[wasm_bindgen(start)]
pub fn start() {
    wasm_bindgen_futures::spawn_local(async {
        let result = match run().await {
            Ok(acc) => format!("done accuracy={acc:.4}"),
            Err(e) => format!("error: {e}"),
        };
        log(&result);
        set_text("result", &result);
    });
}

fn document() -> web_sys::Document {
    web_sys::window()
        .and_then(|w| w.document())
        .expect("runs in a page")
}

fn set_text(id: &str, text: &str) {
    if let Some(el) = document().get_element_by_id(id) {
        el.set_text_content(Some(text));
    }
}

/// Append a line to `#log` (and the console, for headless runs).
fn log(line: &str) {
    web_sys::console::log_1(&line.into());
    if let Some(el) = document().get_element_by_id("log") {
        let old = el.text_content().unwrap_or_default();
        el.set_text_content(Some(&format!("{old}{line}\n")));
    }
}

fn now_s() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now() / 1e3)
}

/// `?epochs=N` overrides the example's 10 epochs.
fn epochs() -> usize {
    let search = web_sys::window()
        .and_then(|w| w.location().search().ok())
        .unwrap_or_default();
    search
        .trim_start_matches('?')
        .split('&')
        .find_map(|kv| kv.strip_prefix("epochs=")?.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(EPOCHS)
}

fn err(e: impl Display) -> String {
    e.to_string()
}

/// Sum over the batches of `value * rows`, kept on the device.
fn accumulate(total: Option<Tensor>, value: &Tensor, rows: usize) -> portagrad::Result<Tensor> {
    let _g = no_grad();
    let weighted = value.mul_scalar(rows as f32)?;
    match total {
        Some(t) => t.add(&weighted),
        None => Ok(weighted),
    }
}

/// Mean loss and accuracy of `model` on `data` in one batch, read back without blocking.
async fn evaluate(dev: &Device, model: &dyn Module, data: &Dataset) -> Result<(f32, f32), String> {
    let (loss, metric) = {
        let _g = no_grad();
        model.set_training(false);
        let batch = DataLoader::new(dev, data, data.len(), None)
            .map_err(err)?
            .next()
            .ok_or("no rows to evaluate")?
            .map_err(err)?;
        let out = model.forward(&batch.x).map_err(err)?;
        loss_and_metric(data.targets(), &out, &batch.y).map_err(err)?
    };
    model.set_training(true);
    Ok((
        loss.item_async().await.map_err(err)?,
        metric.item_async().await.map_err(err)?,
    ))
}

async fn run() -> Result<f32, String> {
    let t_start = now_s();
    let dev = Device::new_async(DeviceOptions::default())
        .await
        .map_err(err)?;
    set_text(
        "adapter",
        dev.info().to_string().trim_start_matches("adapter: "),
    );
    log(&dev.info().to_string());

    let table = parse_csv(Path::new("breast_cancer.csv"), CSV).map_err(err)?;
    let data = Dataset::from_table(&table).map_err(err)?;
    let (mut train, mut test) = data.split(TEST_FRACTION, SEED).map_err(err)?;
    let scaler = train.standardizer().map_err(err)?;
    train.standardize(&scaler).map_err(err)?;
    test.standardize(&scaler).map_err(err)?;
    // As fit's validation_split: the last rows, unshuffled.
    let (fit_rows, val) = train.split_tail(VAL_SPLIT).map_err(err)?;
    let mut sizes = vec![table.n_features];
    sizes.extend(std::iter::repeat_n(HIDDEN, LAYERS));
    sizes.push(data.targets().outputs());
    let model = nn::mlp(&dev, &sizes, Activation::Relu, SEED).map_err(err)?;
    let mut opt = Optimizer::adam(model.parameters(), LR).map_err(err)?;
    let epochs = epochs();
    log(&format!(
        "data: {} rows, {} features; train {} (validation {}) / test {}; model {:?}, {} parameters; Adam lr {LR}, batch {BATCH}, {epochs} epochs",
        table.len(),
        table.n_features,
        fit_rows.len(),
        val.len(),
        test.len(),
        sizes,
        model.num_parameters()
    ));

    let t_fit = now_s();
    for epoch in 1..=epochs {
        let t0 = now_s();
        let loader = DataLoader::new(
            &dev,
            &fit_rows,
            BATCH,
            Some(SEED.wrapping_add(epoch as u64)),
        )
        .map_err(err)?;
        let (mut loss_sum, mut acc_sum) = (None, None);
        for batch in loader {
            let batch = batch.map_err(err)?;
            let (loss, metric) =
                train_step(&model, &mut opt, fit_rows.targets(), &batch).map_err(err)?;
            loss_sum = Some(accumulate(loss_sum, &loss, batch.rows).map_err(err)?);
            acc_sum = Some(accumulate(acc_sum, &metric, batch.rows).map_err(err)?);
            // Hand the step to the GPU now, so it runs while the next one is recorded.
            dev.flush().map_err(err)?;
        }
        let n = fit_rows.len() as f32;
        let loss = loss_sum
            .ok_or("no batches")?
            .item_async()
            .await
            .map_err(err)?
            / n;
        let acc = acc_sum
            .ok_or("no batches")?
            .item_async()
            .await
            .map_err(err)?
            / n;
        if !loss.is_finite() {
            return Err(format!("non-finite loss {loss} in epoch {epoch}"));
        }
        let (val_loss, val_acc) = evaluate(&dev, &model, &val).await?;
        let line = format!(
            "epoch {epoch}/{epochs} - {:.2} s - loss {loss:.4} - accuracy {acc:.4} - val_loss {val_loss:.4} - val_accuracy {val_acc:.4}",
            now_s() - t0
        );
        log(&line);
        set_text("loss", &format!("{loss:.4} (epoch {epoch})"));
    }
    let fit_s = now_s() - t_fit;
    let (test_loss, test_acc) = evaluate(&dev, &model, &test).await?;
    log(&format!(
        "test: loss {test_loss:.4} - accuracy {test_acc:.4} ({} rows); training took {fit_s:.2} s ({} steps), {:.2} s in all",
        test.len(),
        opt.step_count(),
        now_s() - t_start
    ));
    Ok(test_acc)
}
