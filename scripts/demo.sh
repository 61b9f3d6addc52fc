#!/usr/bin/env bash
# The main job on a fresh machine, on the embedded SQLite store, against a tiny model made here
# (no Hub access needed): register it, tune it on the CPU, and print the recommendation and the
# loading code; then import the written loader in a fresh process. Called by `./dev demo`.
set -euo pipefail
work=${AUTOTUNE_DEMO_DIR:-$HOME/.cache/autotune-dev/demo}
mkdir -p "$work"
export AUTOTUNE_DB=${AUTOTUNE_DB:-$work/autotune.db}
export AUTOTUNE_CACHE=${AUTOTUNE_CACHE:-$work/cache}
export HF_HUB_OFFLINE=1
model=$work/tiny-llama
[ -f "$model/config.json" ] || python -m autotune.testing llama "$model" >/dev/null
set -x
autotune gpus
autotune add "$model" --device cpu --prompt-tokens 32 --new-tokens 8 --max-batch 4
autotune estimate "$model" --batch 1,4
autotune tune "$model" --budget-minutes 3 --space "dtype=fp32,bf16 attn=sdpa,eager quant=none"
autotune trials "$model"
autotune recommend "$model" --write "$work/tiny_llama_loader.py"
(cd "$work" && python -c "from tiny_llama_loader import load_model, BATCH_SIZE; model, tokenizer = load_model(); print('loaded', type(model).__name__, 'batch size', BATCH_SIZE)")
autotune db path
{ set +x; } 2>/dev/null
# The demo's command and database are not this shell's: say how to reach them.
bin=$(dirname "$(command -v autotune)")
echo
echo "The demo's autotune and its database, from any shell:"
echo "  export PATH=$(printf %q "$bin"):\$PATH AUTOTUNE_DB=$(printf %q "$AUTOTUNE_DB") AUTOTUNE_CACHE=$(printf %q "$AUTOTUNE_CACHE")"
echo "  autotune status"
echo "  autotune recommend $(printf %q "$model")"
