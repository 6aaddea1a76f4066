//! `cargo run --release --example classify -- --csv FILE`
//!
//! The Keras program of the seed, done properly: read a classification CSV (scikit-learn's
//! bundled form or a plain CSV with a header row; the label in the last column), hold out a
//! seeded 20% test set, standardise with the training statistics, and train
//! Dense 64 relu -> Dense 64 relu -> sigmoid (two classes) or softmax (more), with Adam
//! (lr 1e-3), batch 32, 10 epochs and a validation split of 0.2. Prints the adapter, one line
//! per epoch and the test accuracy, and writes the loss/accuracy curves as an SVG.
//! `--precision mixed|mixed-bf16|mixed-f16` computes the dense layers' matmuls on 16-bit
//! operands with f32 master weights (f16 with dynamic loss scaling).
//! Every default can be changed with a flag (`--help`).

use std::time::Instant;

use clap::{Arg, ArgAction, Command, value_parser};
use portagrad::io::csv::read_csv;
use portagrad::nn::{self, Module};
use portagrad::optim::{LossScaling, Optimizer};
use portagrad::plot::{Series, line_charts_svg};
use portagrad::train::{Dataset, FitConfig, History, Progress, evaluate, fit};
use portagrad::{Activation, DType, Device, Precision};

fn cli() -> Command {
    Command::new("classify")
        .about("Train a dense classifier on a CSV file (label in the last column) on the GPU")
        .arg(
            Arg::new("csv")
                .long("csv")
                .value_name("FILE")
                .default_value(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/data/breast_cancer.csv"
                ))
                .help(
                    "CSV file: scikit-learn bundled form or a header row; label in the last column",
                ),
        )
        .arg(
            Arg::new("epochs")
                .long("epochs")
                .default_value("10")
                .value_parser(value_parser!(usize)),
        )
        .arg(
            Arg::new("batch-size")
                .long("batch-size")
                .default_value("32")
                .value_parser(value_parser!(usize)),
        )
        .arg(
            Arg::new("lr")
                .long("lr")
                .default_value("0.001")
                .value_parser(value_parser!(f64))
                .help("Adam learning rate"),
        )
        .arg(
            Arg::new("hidden")
                .long("hidden")
                .default_value("64")
                .value_parser(value_parser!(usize))
                .help("units of each hidden layer"),
        )
        .arg(
            Arg::new("layers")
                .long("layers")
                .default_value("2")
                .value_parser(value_parser!(usize))
                .help("hidden layers"),
        )
        .arg(
            Arg::new("validation-split")
                .long("validation-split")
                .default_value("0.2")
                .value_parser(value_parser!(f64))
                .help("fraction of the training rows kept for validation"),
        )
        .arg(
            Arg::new("test-fraction")
                .long("test-fraction")
                .default_value("0.2")
                .value_parser(value_parser!(f64))
                .help("fraction of all rows held out as the test set"),
        )
        .arg(
            Arg::new("seed")
                .long("seed")
                .default_value("42")
                .value_parser(value_parser!(u64))
                .help("seed of the split, the shuffles and the initialisation"),
        )
        .arg(
            Arg::new("svg")
                .long("svg")
                .value_name("FILE")
                .default_value("classify.svg")
                .help("where to write the loss/accuracy curves"),
        )
        .arg(
            Arg::new("precision")
                .long("precision")
                .default_value("f32")
                .value_parser(["f32", "mixed", "mixed-bf16", "mixed-f16"])
                .help("matmul operands: f32, or 16-bit with f32 master weights (mixed = bf16; mixed-f16 adds dynamic loss scaling)"),
        )
        .arg(
            Arg::new("quiet")
                .long("quiet")
                .action(ArgAction::SetTrue)
                .help("no progress bar"),
        )
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> portagrad::Result<()> {
    let args = cli().get_matches();
    let path: &String = args.get_one("csv").expect("has a default");
    let epochs = *args.get_one::<usize>("epochs").expect("default");
    let batch = *args.get_one::<usize>("batch-size").expect("default");
    let lr = *args.get_one::<f64>("lr").expect("default");
    let hidden = *args.get_one::<usize>("hidden").expect("default");
    let layers = *args.get_one::<usize>("layers").expect("default");
    let val_split = *args.get_one::<f64>("validation-split").expect("default");
    let test_fraction = *args.get_one::<f64>("test-fraction").expect("default");
    let seed = *args.get_one::<u64>("seed").expect("default");
    let svg: &String = args.get_one("svg").expect("default");
    let precision_name: &String = args.get_one("precision").expect("default");
    let precision = Precision::parse(precision_name).expect("clap checked the value");

    let t_start = Instant::now();
    let dev = Device::new()?;
    println!("{}", dev.info());

    let table = read_csv(path)?;
    let data = Dataset::from_table(&table)?;
    let (mut train, mut test) = data.split(test_fraction, seed)?;
    let scaler = train.standardizer()?;
    train.standardize(&scaler)?;
    test.standardize(&scaler)?;
    let outputs = data.targets().outputs();
    println!(
        "data: {path}: {} rows, {} features, {} classes ({}); train {} / test {}",
        table.len(),
        table.n_features,
        table.n_classes(),
        table.class_names.join(", "),
        train.len(),
        test.len()
    );

    let mut sizes = vec![table.n_features];
    sizes.extend(std::iter::repeat_n(hidden, layers));
    sizes.push(outputs);
    let model = nn::mlp_in(&dev, &sizes, Activation::Relu, seed, precision)?;
    let head = if outputs == 1 { "sigmoid" } else { "softmax" };
    println!(
        "model: {} -> {head} ({} parameters, {} precision); Adam lr {lr}, batch {batch}, {epochs} epochs, validation split {val_split}",
        sizes
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" -> "),
        model.num_parameters(),
        precision.name()
    );
    let mut opt = Optimizer::adam(model.parameters(), lr)?;
    if precision == Precision::Mixed(DType::F16) {
        // f16's small range: scale the loss so small gradients do not flush to zero.
        opt.enable_loss_scaling(LossScaling::default())?;
    }
    let cfg = FitConfig {
        epochs,
        batch_size: batch,
        validation_split: val_split,
        shuffle_seed: Some(seed),
        progress: if args.get_flag("quiet") {
            Progress::Never
        } else {
            Progress::Auto
        },
        verbose: true,
        ..FitConfig::default()
    };
    let t_fit = Instant::now();
    let history = fit(&model, &mut opt, &train, &cfg)?;
    let fit_s = t_fit.elapsed().as_secs_f64();
    let (test_loss, test_acc) = evaluate(&model, &test, 256)?;
    println!(
        "test: loss {test_loss:.4} - accuracy {test_acc:.4} ({} rows); training took {fit_s:.2} s ({} steps), {:.2} s in all",
        test.len(),
        opt.step_count(),
        t_start.elapsed().as_secs_f64()
    );
    std::fs::write(svg, curves_svg(&history, path)).map_err(|source| portagrad::Error::Io {
        path: svg.clone(),
        source,
    })?;
    if let Some((scale, skipped)) = opt.loss_scale()? {
        println!("loss scale: {scale} at the end, {skipped} steps skipped on overflow");
    }
    println!("curves: {svg}");
    Ok(())
}

/// Loss and the metric per epoch, train and validation, as a two-panel SVG.
fn curves_svg(h: &History, title: &str) -> String {
    let line =
        |name: &'static str, f: &dyn Fn(&portagrad::train::EpochStats) -> Option<f32>| Series {
            name,
            points: h
                .epochs
                .iter()
                .enumerate()
                .filter_map(|(i, e)| f(e).map(|v| ((i + 1) as f64, f64::from(v))))
                .collect(),
        };
    line_charts_svg(
        title,
        &[
            (
                "loss",
                "epoch",
                vec![
                    line("train", &|e| Some(e.loss)),
                    line("validation", &|e| e.val_loss),
                ],
            ),
            (
                h.metric_name.as_str(),
                "epoch",
                vec![
                    line("train", &|e| Some(e.metric)),
                    line("validation", &|e| e.val_metric),
                ],
            ),
        ],
    )
}
