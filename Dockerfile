# syntax=docker/dockerfile:1
# Two images from one file (build from the repository root):
#   docker build --target app       -t REGISTRY/llava-labeler:TAG .            # workers, review console
#   docker build --target predictor -t REGISTRY/llava-labeler-predictor:TAG .  # KServe predictor, retrain job
# The app image is CPU-only (python:3.11-slim + the CPU torch wheel). The predictor image is NVIDIA's
# TensorRT-LLM release image, whose CUDA torch and tensorrt-llm 1.2.x are kept as they are: LLaVA-1.5
# runs on TensorRT-LLM's engine path, which NVIDIA ends after 1.2, hence the pin.
# Both run as the unprivileged user 10001 (the Helm chart's runAsUser) and carry no credentials:
# every secret arrives at run time as an environment variable or a mounted file.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TRTLLM_IMAGE=nvcr.io/nvidia/tensorrt-llm/release:1.2.0

# ---------------------------------------------------------------- app: dependencies and the project
FROM ${PYTHON_IMAGE} AS app-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# torch first, from the CPU index: the plain requirement would pull a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
# The remaining dependencies from pyproject.toml alone, so source edits do not redo this layer.
COPY pyproject.toml /src/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY README.md /src/
COPY engine /src/engine
COPY labeler /src/labeler
COPY training /src/training
COPY ui /src/ui
RUN pip install --no-deps /src \
    && python -c "import engine, labeler, training, ui" \
    && llava-labeler --help > /dev/null

# ---------------------------------------------------------------- app: the runtime image
FROM ${PYTHON_IMAGE} AS app
LABEL org.opencontainers.image.title="llava-labeler" \
      org.opencontainers.image.description="llava-labeler workers, review console and CLI (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && install -d -o app -g app /var/lib/llava-labeler
COPY --from=app-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/app \
    LLAVA_LABELER_DATA_DIR=/var/lib/llava-labeler \
    HEALTHCHECK_URL=http://127.0.0.1:9108/metrics
WORKDIR /home/app
USER 10001:10001
# 9108: a worker's Prometheus endpoint; 8501: the review console.
EXPOSE 9108 8501
# Checks what the container serves: the worker's metrics by default; for `ui`, run with
# HEALTHCHECK_URL=http://127.0.0.1:8501/_stcore/health.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=5)"]
ENTRYPOINT ["llava-labeler"]
CMD ["worker"]

# ---------------------------------------------------------------- predictor: TensorRT-LLM on GPU
FROM ${TRTLLM_IMAGE} AS predictor
LABEL org.opencontainers.image.title="llava-labeler-predictor" \
      org.opencontainers.image.description="llava-labeler KServe predictor and retrain job (TensorRT-LLM 1.2, CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"
# The base's Python is the system one; pip may add to it inside this image.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_EXTRA_INDEX_URL=https://pypi.nvidia.com
# The project's dependencies except torch, resolved together with tensorrt-llm 1.2.x while the base's
# CUDA torch stays pinned: pip fails the build rather than produce an image with a broken stack.
COPY pyproject.toml /src/
RUN python3 -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/constraints.txt \
    && python3 -c "import tomllib; print('\n'.join(d for d in tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies'] if not d.startswith('torch')))" \
        > /tmp/requirements.txt \
    && python3 -m pip install -c /tmp/constraints.txt "tensorrt-llm==1.2.*" -r /tmp/requirements.txt
COPY README.md /src/
COPY engine /src/engine
COPY labeler /src/labeler
COPY training /src/training
COPY ui /src/ui
RUN python3 -m pip install --no-deps /src \
    && python3 -c "from importlib.metadata import version; v = version('tensorrt_llm'); assert v.startswith('1.2.'), v" \
    && llava-labeler --help > /dev/null \
    && rm -rf /src /tmp/requirements.txt /tmp/constraints.txt
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/app \
    HF_HUB_OFFLINE=1 \
    LLAVA_LABELER_ENGINE__DEVICE=cuda
WORKDIR /home/app
USER 10001:10001
# KServe's HTTP port.
EXPOSE 8080
# Compiling and loading engines takes minutes: a long start period before failures count.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20m --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=5)"]
ENTRYPOINT ["llava-labeler"]
CMD ["serve", "--model", "/mnt/models", "--backend", "trtllm"]
