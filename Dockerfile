# autotune's daemon on NVIDIA GPUs, with its database on a volume.
#
#   docker build -t autotune .
#   docker run --gpus all -v autotune-data:/data -v ~/.cache/huggingface:/data/hf autotune
#   docker run --gpus all -v autotune-data:/data autotune autotune add tiiuae/falcon-7b --max-memory 20GiB
#
# torch's wheels carry their own CUDA libraries; the base image brings the CUDA user-space the
# driver pairs with. Set --build-arg FLASH_ATTN=1 to add FlashAttention-2 (it builds against the
# installed torch, or fetches a matching prebuilt wheel when one exists), FLASH_ATTN_4=1 to add
# FlashAttention-4 (wheels; Hopper and Blackwell GPUs).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ARG FLASH_ATTN=0
ARG FLASH_ATTN_4=0
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/autotune \
    PATH=/opt/autotune/bin:$PATH \
    AUTOTUNE_DB=/data/autotune.db \
    AUTOTUNE_CACHE=/data/cache \
    HF_HOME=/data/hf

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/autotune

WORKDIR /src
COPY pyproject.toml README.md ./
COPY autotune ./autotune
COPY migrations ./migrations
RUN pip install --upgrade pip \
 && pip install ".[postgres]" \
 && if [ "$FLASH_ATTN" = "1" ]; then pip install ninja packaging && pip install flash-attn --no-build-isolation; fi \
 && if [ "$FLASH_ATTN_4" = "1" ]; then pip install ".[flash-attn-4]"; fi \
 && autotune --version

VOLUME ["/data"]
WORKDIR /data
HEALTHCHECK --interval=60s --timeout=10s CMD autotune status >/dev/null || exit 1
CMD ["autotune", "daemon"]
