"""A randomly initialised gpt2-small (124M, 50257 x 768 embedding) for the GPU check: saves it
as a Hugging Face directory, writes a (2, 128) batch of ids, and prints PyTorch's loss on them
(labels = input_ids) and Hugging Face's KV-cached greedy decode speed on the same GPU, so
`gpt2 score` and `gpt2 generate` can be compared in the same call.

usage: python3 scripts/gpu_gpt2_ref.py OUT_DIR IDS_JSON
"""
import json
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

out, ids_path = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config()).eval()
model.save_pretrained(out, safe_serialization=True)
ids = torch.randint(0, 50257, (2, 128))
json.dump(ids.tolist(), open(ids_path, "w"))
with torch.no_grad():
    loss = model(ids, labels=ids).loss.item()
print(json.dumps({"torch_cpu_loss": loss}))
if torch.cuda.is_available():
    m = model.cuda()
    prompt = ids[:1, :8].cuda()
    with torch.no_grad():
        for new in (8, 128):
            torch.cuda.synchronize()
            t = time.perf_counter()
            m.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                       use_cache=True, pad_token_id=0)
            torch.cuda.synchronize()
            secs = time.perf_counter() - t
        print(f"HF transformers (PyTorch {torch.__version__}, f32, {torch.cuda.get_device_name()}): "
              f"greedy decode {new} tokens in {secs:.3f} s = {new / secs:.1f} tokens/s")
