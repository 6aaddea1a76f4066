//! The whole training loop an application writes: model, optimizer, batches, save.
//! `cargo run --release --example embed`
use portagrad::nn::{self, Module};
use portagrad::optim::Optimizer;
use portagrad::train::{DataLoader, Dataset, Targets, train_step};
use portagrad::{Activation, Device, Result, io::checkpoint};

fn main() -> Result<()> {
    let dev = Device::new()?;
    // 256 rows of 8 features; the label says whether their sum is positive.
    let x: Vec<f32> = (0..256 * 8)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let y = x
        .chunks(8)
        .map(|r| f32::from(u8::from(r.iter().sum::<f32>() > 0.0)))
        .collect();
    let data = Dataset::new(x, 8, Targets::Binary(y))?;

    let model = nn::mlp(&dev, &[8, 32, 1], Activation::Relu, 0)?;
    let mut opt = Optimizer::adam(model.parameters(), 1e-2)?;
    for epoch in 0..20 {
        let mut last = None;
        for batch in DataLoader::new(&dev, &data, 32, Some(epoch))? {
            let (loss, _accuracy) = train_step(&model, &mut opt, data.targets(), &batch?)?;
            last = Some(loss); // stays on the GPU: no wait per step
        }
        if let Some(loss) = last.filter(|_| epoch % 5 == 4) {
            println!("epoch {}: loss {:.4}", epoch + 1, loss.item()?);
        }
    }
    let path = std::env::temp_dir().join("embed.safetensors");
    checkpoint::save(&path, &model, Some(&opt))?; // atomic: a failed write keeps the old file
    println!("saved {}", path.display());
    Ok(())
}
