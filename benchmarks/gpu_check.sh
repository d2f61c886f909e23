#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build the tiny model and a 0.5B-shaped model for CUDA,
# run them, and print decode tokens/s next to the CPU build of the same model.
#
#   bash benchmarks/gpu_check.sh            (after `make setup`)
#
# Needs the CUDA build of onnxruntime-genai in place of the CPU one; the script installs it
# into the venv (pip install onnxruntime-genai-cuda==0.18.0) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export ORT_DISABLE_TELEMETRY=1 OLIVE_DISABLE_TELEMETRY=1 HF_HUB_OFFLINE=1
WORK=$(mktemp -d /tmp/slmk-gpu-XXXX)
export SLMK_CACHE_DIR="$WORK/cache"
trap 'rm -rf "$WORK"' EXIT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || {
  echo "no NVIDIA GPU visible (nvidia-smi failed): nothing to check"; exit 1; }
if ! $PY -c "import importlib.metadata as m; m.version('onnxruntime-genai-cuda')" 2>/dev/null; then
  $PY -m pip install --quiet onnxruntime-genai-cuda==0.18.0
fi
$PY -m slmk doctor | grep -E "ep:cuda|versions" || true

# a 0.5B-shaped model (Qwen2.5-0.5B dimensions, random weights) made here
$PY - "$WORK/qwen05b" <<'PYEOF'
import shutil, sys
from pathlib import Path
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
out = Path(sys.argv[1]); tiny = Path("examples/tiny-chat/model")
torch.manual_seed(0)
config = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, vocab_size=1024, max_position_embeddings=2048, tie_word_embeddings=True)
config.architectures = ["Qwen2ForCausalLM"]
Qwen2ForCausalLM(config).save_pretrained(out)
for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
    if (tiny / name).exists():
        shutil.copy(tiny / name, out / name)
PYEOF

measure() {  # model_dir ep precision
  local out="$WORK/build-$(basename "$1")-$2-$3"
  $PY -m slmk -q convert "$1" -p "$3" --ep "$2" -o "$out" --force >/dev/null
  $PY - "$out" "$2" <<'PYEOF'
import sys, statistics
from slmk.app import open_session
session = open_session(sys.argv[1], execution_provider=sys.argv[2])
rates = []
for _ in range(3):
    for _ in session.generate([{"role": "user", "content": "Tell me about Veltra and its moons."}],
                              max_new_tokens=128, do_sample=False):
        pass
    rates.append(session.last_stats.decode_tokens_per_s)
session.close()
print(f"{sys.argv[1].rsplit('/', 1)[-1]:<40} decode {statistics.median(rates):9.1f} tokens/s")
PYEOF
}

for model in examples/tiny-chat/model "$WORK/qwen05b"; do
  for ep_precision in "cpu int4" "cuda int4" "cuda fp16"; do
    set -- $ep_precision
    measure "$model" "$1" "$2"
  done
done
