//! Training data: DataLoader, Dataset and Standardizer.

use portagrad::Activation;
use portagrad::io::csv::Standardizer;
use portagrad::nn::{self, Module};
use portagrad::optim::Optimizer;
use portagrad::testing::shared_device;
use portagrad::train::{DataLoader, Dataset, Targets};

use crate::{Corpus, err, ok};

#[test]
fn data_loader_and_dataset() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("train/dataset");
    c.case("DataLoader batch 0", || {
        let data = ok(Dataset::new(
            vec![0.0; 4],
            2,
            Targets::Binary(vec![0.0, 1.0]),
        ))?;
        err(
            DataLoader::new(d, &data, 0, None).map(|_| ()),
            "InvalidArgument",
            &["batch size"],
        )
    });
    c.case("Dataset with zero features", || {
        err(
            Dataset::new(vec![], 0, Targets::Binary(vec![0.0, 1.0])),
            "InvalidArgument",
            &[],
        )
        .or_else(|_| {
            err(
                Dataset::new(vec![], 0, Targets::Binary(vec![0.0, 1.0])),
                "Shape",
                &[],
            )
        })
    });
    c.case("Dataset with zero rows", || {
        match Dataset::new(vec![], 2, Targets::Binary(vec![])) {
            Err(e) => err::<()>(Err(e), "InvalidArgument", &[]),
            Ok(data) => {
                let model = ok(nn::mlp(d, &[2, 1], Activation::None, 0))?;
                let mut opt = ok(Optimizer::sgd(model.parameters(), 0.1))?;
                let cfg = portagrad::train::FitConfig {
                    progress: portagrad::train::Progress::Never,
                    ..Default::default()
                };
                err(
                    portagrad::train::fit(&model, &mut opt, &data, &cfg).map(|_| ()),
                    "InvalidArgument",
                    &["no rows to train on"],
                )
            }
        }
    });
    c.case("Dataset split NaN fraction", || {
        let data = ok(Dataset::new(
            vec![0.0; 8],
            2,
            Targets::Binary(vec![0.0, 1.0, 0.0, 1.0]),
        ))?;
        err(
            data.split(f64::NAN, 0).map(|_| ()),
            "InvalidArgument",
            &["split"],
        )
    });
    c.finish();
}

#[test]
fn standardizer_features() {
    let mut c = Corpus::new("train/standardizer");
    c.case("Standardizer of zero features", || {
        err(
            Standardizer::fit(&[1.0, 2.0], 0).map(|_| ()),
            "Shape",
            &["rows of 0"],
        )
    });
    c.case("Standardizer features not a multiple", || {
        err(
            Standardizer::fit(&[1.0, 2.0, 3.0], 2).map(|_| ()),
            "InvalidArgument",
            &[],
        )
        .or_else(|_| {
            err(
                Standardizer::fit(&[1.0, 2.0, 3.0], 2).map(|_| ()),
                "Shape",
                &[],
            )
        })
    });
    c.finish();
}
