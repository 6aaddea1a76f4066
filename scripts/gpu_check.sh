#!/usr/bin/env bash
# Tests and benchmarks on a GPU machine that has no Rust toolchain: runs the test binaries and
# examples built elsewhere by scripts/pack_gpu_bins.sh (stripped, packed into .bins/). Copy the
# repository there with .bins/ and, if that machine lacks the Vulkan loader, .gl/ holding the
# Debian packages libvulkan1 (and libglvnd's) to unpack. Logs go to $OUT (default /tmp/out); a
# summary table prints last. Usage: scripts/gpu_check.sh ["tests bench shakespeare torch gpt2"]
# with TESTS="matmul ops ..." and BENCH="matmul gpt ..." to narrow the runs.
# `scripts/gpu_check.sh matmul` is the tensor-core check in one call: the ops_matmul tests with
# PORTAGRAD_REQUIRE_COOP=1 (an adapter without cooperative matrices fails them instead of
# passing on the error path), `bench matmul` (f32, f16 portable, f16 cooperative GFLOP/s) and
# cuBLAS f32 / TF32 / f16 through PyTorch on the same shapes.
# `scripts/gpu_check.sh gptstep` is the training-step comparison in one call: the shakespeare
# gpu preset (6 x 384, batch 64 x 256) in PyTorch (eager f32, TF32, bf16 autocast, torch.compile)
# and ours in f32, mixed bf16 and mixed f16.
set -u
if [ -d .gl ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
export XDG_RUNTIME_DIR=/tmp/xdg && mkdir -p $XDG_RUNTIME_DIR && chmod 700 $XDG_RUNTIME_DIR
# An H100 lists cooperative matrices: the tensor-core tests must run there, not take the error path.
export PORTAGRAD_REQUIRE_COOP=${PORTAGRAD_REQUIRE_COOP:-1}
# The binaries find data/ and tests/golden/ through the path they were built at.
built_at=$(cat .bins/built_at)
[ "$PWD" = "$built_at" ] || { mkdir -p "$(dirname "$built_at")" && ln -sfn "$PWD" "$built_at"; }
tar xJf .bins/bins.tar.xz -C /tmp
B=/tmp/bins
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# Matmul autotune choices: measured afresh on each bare machine (the bench's kernel column
# shows what was chosen); not in $OUT, which brings back 8 files at most.
export PORTAGRAD_CACHE_DIR=${PORTAGRAD_CACHE_DIR:-/tmp/portagrad-cache}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
what=${1:-tests bench shakespeare torch gpt2 gptstep}
summary=""
if [[ $what == *tests* ]]; then
  for t in ${TESTS:-$(ls $B | grep -v "^ex_")}; do
    s=$(date +%s%N)
    echo "=== $t" >>"$OUT/tests.log"
    timeout 120 $B/$t >>"$OUT/tests.log" 2>&1
    rc=$?
    line=$(grep -E '^test result' "$OUT/tests.log" | tail -1)
    summary+="$(printf '%-12s rc=%-3s %6d ms  %s' "$t" "$rc" $(( ($(date +%s%N) - s) / 1000000 )) "$line")"$'\n'
  done
  grep -E -B2 -A25 'panicked|FAILED|failures:' "$OUT/tests.log" | head -150
fi
if [[ $what == *matmul* ]]; then
  s=$(date +%s%N)
  timeout 240 $B/ops_matmul >"$OUT/matmul_tests.log" 2>&1
  rc=$?
  grep -E -A25 'panicked|FAILED' "$OUT/matmul_tests.log" | head -60
  line=$(grep -E '^test result' "$OUT/matmul_tests.log" | tail -1)
  summary+="$(printf '%-12s rc=%-3s %6d ms  %s' "ops_matmul (REQUIRE_COOP=$PORTAGRAD_REQUIRE_COOP)" "$rc" $(( ($(date +%s%N) - s) / 1000000 )) "$line")"$'\n'
  timeout 300 $B/ex_bench matmul 2>&1 | tee "$OUT/matmul_bench.log"
  timeout 120 python3 scripts/torch_matmul_ref.py 2>&1 | tee "$OUT/torch_matmul.log"
fi
if [[ $what == *bench* ]]; then
  timeout 300 $B/ex_bench ${BENCH:-core matmul attention autograd train gpt} 2>&1 | tee "$OUT/bench.log"
fi
if [[ $what == *shakespeare* ]]; then
  timeout 300 $B/ex_shakespeare ${SHAKESPEARE:---steps 300 --eval-every 150} --out /tmp/sh --svg /tmp/sh.svg 2>&1 | tee "$OUT/shakespeare.log" | tail -25
fi
if [[ $what == *torch* ]]; then
  timeout 120 python3 scripts/torch_matmul_ref.py 2>&1 | tee "$OUT/torch.log"
fi
if [[ $what == *gptstep* ]]; then
  timeout 300 python3 scripts/torch_gpt_step.py 2>&1 | tee "$OUT/gptstep.log"
  for prec in f32 mixed mixed-f16; do
    echo "=== portagrad --precision $prec" | tee -a "$OUT/gptstep.log"
    timeout 180 $B/ex_shakespeare --preset gpu --steps 60 --eval-every 1000 --precision $prec \
      --out /tmp/sh-$prec --svg /tmp/sh-$prec.svg 2>&1 | grep -E "model:|ms/step|tokens/s" | tail -4 | tee -a "$OUT/gptstep.log"
  done
fi
if [[ $what == *gpt2* ]]; then
  # Real-size (random) gpt2-small: load, score against PyTorch, decode speed against HF.
  timeout 180 python3 scripts/gpu_gpt2_ref.py /tmp/gpt2r /tmp/gpt2r-ids.json 2>&1 | grep -v Warning | tee "$OUT/gpt2.log"
  timeout 120 $B/ex_gpt2 score --model /tmp/gpt2r --ids /tmp/gpt2r-ids.json 2>&1 | tail -2 | tee -a "$OUT/gpt2.log"
  timeout 120 $B/ex_gpt2 generate --model /tmp/gpt2r --prompt "The" --max-new-tokens 128 --greedy --warmup 2>&1 | tail -2 | tee -a "$OUT/gpt2.log"
fi
printf '%s' "$summary"
