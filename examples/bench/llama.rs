//! A SmolLM2-135M-shaped Llama (random weights, real sizes: 30 layers, 576 wide, 9 query / 3
//! K/V heads, MLP 1536, vocabulary 49152, tied head): KV-cached prefill and decode tokens/s and
//! peak device memory, batch 1, greedy, with f32 and with bf16 weight matrices.
//! `scripts/bench_llama_hf.py` times transformers on the same shapes.

use portagrad::generate::{GenerateOptions, Sampler, SamplingConfig, generate_batch};
use portagrad::models::{Llama, LlamaConfig};
use portagrad::{DType, Device, Result, Tensor};

/// SmolLM2-135M's config.json, the fields the model reads.
const SMOLLM2_135M: &str = r#"{
  "model_type": "llama", "hidden_act": "silu", "vocab_size": 49152, "hidden_size": 576,
  "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
  "num_key_value_heads": 3, "rms_norm_eps": 1e-5, "rope_theta": 100000,
  "max_position_embeddings": 8192, "tie_word_embeddings": true
}"#;

pub fn run(dev: &Device) -> Result<()> {
    let cfg = LlamaConfig::from_json(SMOLLM2_135M)?;
    let (prompt_len, new) = (128, 32);
    println!(
        "\n## llama: SmolLM2-135M shape ({} parameters, random weights), batch 1, greedy",
        cfg.num_params()
    );
    println!("| weights | prompt | new tokens | prefill tokens/s | decode tokens/s | peak MiB |");
    println!("|---|---|---|---|---|---|");
    for dtype in [DType::F32, DType::BF16] {
        let mut k = 0;
        let model = Llama::build_as(
            dev,
            cfg.clone(),
            prompt_len + new,
            dtype,
            &mut |name, shape| {
                k += 1;
                if name.ends_with("norm.weight") {
                    Tensor::ones(dev, shape)
                } else if Llama::is_weight_matrix(name) {
                    Tensor::rand_normal(dev, shape, 0.0, 0.02, k)?.to_dtype(dtype)
                } else {
                    Tensor::zeros(dev, shape)
                }
            },
        )?;
        let prompts = [(0..prompt_len)
            .map(|i| (i * 7919 % 49152) as u32)
            .collect::<Vec<u32>>()];
        let opts = GenerateOptions {
            max_new_tokens: new,
            ..Default::default()
        };
        let greedy = || {
            Sampler::new(SamplingConfig {
                temperature: 0.0,
                ..Default::default()
            })
        };
        // Warm-up: compile pipelines, fill the pool.
        generate_batch(&model, &prompts, &opts, &mut [greedy()?], &mut |_, _| {
            Ok(true)
        })?;
        dev.reset_stats();
        let g = generate_batch(&model, &prompts, &opts, &mut [greedy()?], &mut |_, _| {
            Ok(true)
        })?;
        println!(
            "| {} | {prompt_len} | {new} | {:.1} | {:.2} | {:.0} |",
            dtype.name(),
            g.prefill_tokens_per_sec(),
            g.decode_tokens_per_sec(),
            dev.stats().peak_bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
