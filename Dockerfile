# syntax=docker/dockerfile:1
# autotune's daemon on NVIDIA GPUs: its database on a volume, the Hugging Face cache mounted.
#
#   docker build -t autotune .
#   docker run -d --name autotune --gpus all --init --stop-timeout 900 \
#       -v autotune-data:/data -v ~/.cache/huggingface:/hf autotune
#   docker exec autotune autotune add tiiuae/falcon-7b --max-memory 20GiB   # the same database and HF cache
#   docker exec autotune autotune status
#   docker exec autotune autotune recommend tiiuae/falcon-7b --write /data/falcon_7b.py
#
# /data holds the database (AUTOTUNE_DB), the quality references and the compile caches
# (AUTOTUNE_CACHE); /hf is the Hugging Face cache (HF_HOME): `autotune add` reads a model's
# config.json there and the daemon's workers load its weights from there, so download a model
# into it on the host first (`hf download tiiuae/falcon-7b`) unless the container reaches the Hub.
# The first SIGTERM (`docker stop`) lets the daemon finish the candidate it is measuring, which
# can take minutes on a 7B model: hence --stop-timeout. --init reaps what compile workers leave.
# The health check fails when no tuner of this container heartbeats (autotune status --check-daemon).
#
# Versions: those the tests and the GPU runs of BENCHMARKS.md used: torch 2.11.0 built for CUDA
# 13.0, transformers 5.17.0, accelerate 1.15.0, bitsandbytes 0.50.2, and requirements/dev.txt's
# pins for the rest (pip resolves what those pull in). torch's wheels carry their own CUDA
# libraries; the host needs an NVIDIA driver for CUDA 13.0 (580 or newer) and the NVIDIA
# Container Toolkit. Another torch build: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
#
# FlashAttention-2 is not built here: it compiles against torch with a CUDA toolkit this runtime
# image does not have. FlashAttention-4 (Hopper and Blackwell GPUs) installs from wheels:
# --build-arg FLASH_ATTN_4=1 adds it (with the CuTe DSL's CUDA 13 libraries), and the search then
# measures it wherever it can run. torchao 0.18 (its int8, int4 and float8 candidates) pairs with
# torch 2.11 and is installed.
ARG BASE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ARG FLASH_ATTN_4=0
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/autotune \
    PATH=/opt/autotune/bin:$PATH \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    AUTOTUNE_DB=/data/autotune.db \
    AUTOTUNE_CACHE=/data/cache \
    HF_HOME=/hf

# Python 3.12; a C compiler and Python's headers for Triton, which builds its launchers when a
# static cache is compiled.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/autotune

RUN pip install --upgrade pip \
 && pip install torch==2.11.0 --index-url "$TORCH_INDEX" \
 && pip install transformers==5.17.0 accelerate==1.15.0 bitsandbytes==0.50.2 optuna==5.0.0 sqlalchemy==2.1.9 \
        alembic==1.20.1 nvidia-ml-py==13.615.71 platformdirs==4.14.8 "psycopg[binary]==3.3.9" torchao==0.18.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY autotune ./autotune
COPY migrations ./migrations
RUN pip install --no-deps . \
 && if [ "$FLASH_ATTN_4" = "1" ]; then pip install "flash-attn-4[cu13]>=4.0.0b36"; fi \
 && pip check \
 && python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
 && autotune --version

VOLUME ["/data", "/hf"]
WORKDIR /data
HEALTHCHECK --interval=60s --timeout=20s --start-period=120s --retries=3 CMD ["autotune", "status", "--check-daemon"]
CMD ["autotune", "daemon"]
