# syntax=docker/dockerfile:1
# Two images from one file (build from the repository root):
#   docker build --target app       -t REGISTRY/llava-labeler:TAG .            # workers, review console
#   docker build --target predictor -t REGISTRY/llava-labeler-predictor:TAG .  # KServe predictor, retrain job
# The app image is CPU-only (python:3.11-slim + the CPU torch wheel). The predictor image is NVIDIA's
# TensorRT-LLM release image, whose CUDA torch and tensorrt-llm 1.2.x are kept as they are: LLaVA-1.5
# runs on TensorRT-LLM's engine path, which NVIDIA ends after 1.2, hence the pin. Its Python stack
# (transformers 4.57.1, xgrammar 0.1.25, numpy<2, ...) wins over pyproject.toml's: see that stage.
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
COPY entrypoints /src/entrypoints
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
# Why the install goes in three steps: tensorrt-llm 1.2.x pins its own stack (NVIDIA/TensorRT-LLM's
# requirements.txt for 1.2: torch>=2.9.0a0,<=2.9.x, transformers==4.57.1, xgrammar==0.1.25, numpy<2,
# fastapi>=0.120.1,<=0.121.3 (so starlette<0.51), huggingface-hub<1 through transformers), which the
# project's pyproject.toml contradicts (transformers>=5.20, xgrammar>=0.2.8, numpy>=2,
# huggingface-hub>=1.0, kserve==0.21.* whose starlette>=1.3.1 fastapi 0.121 refuses). One resolve of
# both can never succeed, so TensorRT-LLM's stack wins and the project adapts to it:
#   1. tensorrt-llm 1.2.x, with the base's CUDA torch held. Its declared requirements (its pins, extras
#      and URLs dropped) plus the installed torch and tensorrt-llm become /tmp/trtllm-pins.txt; the names
#      of everything installed go to /tmp/trtllm-stack.txt.
#   2. Only the project dependencies that the image does not have yet (kserve, typer, SQLAlchemy, Celery,
#      ...: the predictor and the retrain job), resolved with those pins as constraints, so nothing
#      TensorRT-LLM pins can move, or pip fails the build. Skipped: whatever is installed already (its
#      version wins over pyproject.toml's), torch (the base's build) and streamlit (the console runs on the
#      app image). kserve is 0.19.*, the newest whose requirements fit that fastapi/starlette (0.19 pins
#      starlette==0.49.1; 0.20 and 0.21 need starlette>=1.0.1). Packages TensorRT-LLM does not pin may
#      move for kserve (it needs psutil<6, protobuf>=6.33.5, grpcio>=1.73, urllib3>=2.6, ...): a full
#      `pip freeze` as constraints would fail on whichever of those the image carries at another version.
#   3. The project itself with --no-deps (its metadata still names the app image's versions: `pip check`
#      reports those, by design), then imports and CLIs as a smoke test.
# Verified on a CPU machine without Docker (the image itself has never been built there): those pins
# from TensorRT-LLM's published requirements; that kserve==0.21.* cannot resolve with them and
# kserve==0.19.* can (pip's resolver, with the pins as constraints); the engine and serving tests
# (tests/engine, tests/serving) on torch 2.13.0 CPU + transformers 4.57.1 + xgrammar 0.1.25 +
# numpy 1.26 + fastapi 0.121.3/starlette 0.49.1 + kserve 0.19.0, including checkpoints saved by
# transformers 5.x. Not verified: this Dockerfile under `docker build`, the NGC image's actual package
# set (a conflict with something only it carries fails step 2), CUDA torch 2.9, the TensorRT engine
# path (tests marked gpu), and the retrain job's training code on transformers 4.57.1.
COPY pyproject.toml /src/
RUN python3 -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/torch.txt \
    && python3 -m pip install -c /tmp/torch.txt "tensorrt-llm==1.2.*" \
    && python3 -c "from importlib.metadata import version; v = version('tensorrt_llm'); assert v.startswith('1.2.'), v" \
    && python3 -c "from importlib.metadata import requires, version; from packaging.requirements import Requirement; \
pins = [Requirement(r) for r in requires('tensorrt_llm') or [] if 'extra ==' not in r]; \
lines = [r.name + str(r.specifier) + ('; ' + str(r.marker) if r.marker else '') for r in pins if not r.url]; \
print('\n'.join(lines + ['torch==' + version('torch'), 'tensorrt-llm==' + version('tensorrt_llm')]))" > /tmp/trtllm-pins.txt \
    && python3 -m pip list --format=freeze > /tmp/trtllm-stack.txt \
    && cat /tmp/trtllm-pins.txt
RUN python3 -c "import re, tomllib; \
norm = lambda name: re.sub(r'[-_.]+', '-', name).lower(); \
name = lambda req: norm(re.match(r'[A-Za-z0-9._-]+', req).group()); \
stack = {norm(line.split('==')[0]) for line in open('/tmp/trtllm-stack.txt') if '==' in line}; \
skip = stack | {'torch', 'streamlit'}; \
override = {'kserve': 'kserve==0.19.*'}; \
deps = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(override.get(name(d), d) for d in deps if name(d) not in skip))" > /tmp/requirements.txt \
    && cat /tmp/requirements.txt \
    && python3 -m pip install -c /tmp/trtllm-pins.txt -r /tmp/requirements.txt
COPY README.md /src/
COPY engine /src/engine
COPY labeler /src/labeler
COPY training /src/training
COPY ui /src/ui
COPY entrypoints /src/entrypoints
RUN python3 -m pip install --no-deps /src \
    && python3 -c "from importlib.metadata import version; v = version('tensorrt_llm'); assert v.startswith('1.2.'), v" \
    && python3 -c "import engine.predictor, engine.backends.trtllm, engine.trtllm_build" \
    && llava-labeler --help > /dev/null \
    && llava-labeler serve --help > /dev/null \
    && rm -rf /src /tmp/requirements.txt /tmp/torch.txt /tmp/trtllm-pins.txt /tmp/trtllm-stack.txt
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
