#!/usr/bin/env bash
# The main job on a fresh machine, on the embedded SQLite store, against a tiny model made here
# (no Hub access needed). Called by `./dev demo`; run it again at will.
set -euo pipefail
work=${AUTOTUNE_DEMO_DIR:-$HOME/.cache/autotune-dev/demo}
mkdir -p "$work"
export AUTOTUNE_DB=${AUTOTUNE_DB:-$work/autotune.db}
export HF_HUB_OFFLINE=1
model=$work/tiny-llama
[ -f "$model/config.json" ] || python -m autotune.testing llama "$model" >/dev/null
set -x
autotune gpus
autotune add "$model" --prompt-tokens 64 --new-tokens 16 --max-batch 8
autotune models
autotune db path
