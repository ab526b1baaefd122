# User-code image of the `dw_pipelines` Dagster code location. The same image runs in two roles on
# Kubernetes (docs/deploy.md):
#   * the code server (Helm `dagster-user-deployments`): `dagster api grpc` serves the definitions
#     to the webserver and the daemon (the outbox sensor and the reconciler run here);
#   * every run pod: K8sRunLauncher starts one Kubernetes Job per run with this image and the
#     arguments `dagster api execute_run ...`.
# The webserver and the daemon use Dagster's own images (the Helm chart's), not this one.
#
# Build (tags: `vX.Y.Z` for main releases, `vX.Y.Z-rc.<short sha>` for branches and PRs, never
# `latest`; see docs/deploy.md):
#   docker build \
#     --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest> \
#     --build-arg VERSION=v0.1.0 --build-arg VCS_REF="$(git rev-parse HEAD)" \
#     --build-arg BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
#     -t registry.example.com/dw-pipelines:v0.1.0 .
#
# No secret enters the image: the DW_* database URLs and the Dagster Postgres password come from
# Kubernetes Secrets at run time (`envSecrets` in helm-values.yaml).

# Base image, pinned by version. Releases also pin it by digest: look the digest up with
#   docker buildx imagetools inspect python:3.11.11-slim-bookworm
# and pass `--build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest>` (CI does).
# Both stages use the same base, so the venv's interpreter path (/usr/local/bin/python3.11)
# exists in the runtime stage.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --------------------------------------------------------------------------------------------
# builder: a virtual environment with the dependencies, then the package (non-editable)
# --------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# Bytecode is compiled here (pip's default), so code servers and run pods start without
# compiling dagster's modules on every start.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /build

# 1) Dependencies only. pyproject.toml plus a stub package (an empty `dw_pipelines/__init__.py`
#    and an empty README.md, which pyproject's `readme` needs) build a throwaway dw_pipelines
#    whose install pulls every dependency; the stub itself is uninstalled again. This layer is
#    rebuilt only when pyproject.toml changes, not on every code change. All dependencies ship
#    manylinux wheels for CPython 3.11 (psycopg[binary] and adbc-driver-postgresql bundle libpq),
#    so no compiler is needed.
COPY pyproject.toml ./
RUN mkdir dw_pipelines \
    && touch dw_pipelines/__init__.py README.md \
    && pip install --no-cache-dir . \
    && pip uninstall --yes dw_pipelines \
    && rm -rf dw_pipelines README.md build ./*.egg-info

# 2) The package itself, without dependencies (they are in the layer above). Non-editable: the
#    code, the dataset contracts, the samples and the migrations land in site-packages.
COPY README.md ./
COPY dw_pipelines ./dw_pipelines
#    The import check runs from / so it loads the installed copy (with its package data), not the
#    source folder in /build.
RUN pip install --no-cache-dir --no-deps . \
    && cd / && python -c "import dw_pipelines.definitions" \
    && pip check

# --------------------------------------------------------------------------------------------
# runtime: the base image, the venv (which holds the package) and workspace.yaml
# --------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=dev
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
ARG PYTHON_IMAGE

LABEL org.opencontainers.image.title="dw-pipelines" \
      org.opencontainers.image.description="DW ingestion worker: Dagster code location dw_pipelines (outbox sensor -> ingestion runs -> staging and storage)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# uid/gid 10001: not root, and above the range of the base image's system users. The numeric
# USER below lets Kubernetes verify `runAsNonRoot: true`.
RUN groupadd --system --gid 10001 dagster \
    && useradd --system --uid 10001 --gid 10001 --no-log-init \
        --home-dir /home/dagster --create-home --shell /usr/sbin/nologin dagster \
    && mkdir -p /opt/dagster/dagster_home /opt/dagster/app \
    && chown 10001:10001 /opt/dagster/dagster_home

COPY --from=builder /opt/venv /opt/venv
# The workspace file names the code location (`dw_pipelines`) for the commands run in this image:
# `dagster job launch -w workspace.yaml ...`, `dw-pipelines outbox retry -w workspace.yaml`.
COPY workspace.yaml /opt/dagster/app/workspace.yaml

# DAGSTER_HOME is where the Helm chart mounts the instance's dagster.yaml (its ConfigMap) in run
# pods; the folder belongs to the app user so Dagster can write there. Everything else in the
# image is read-only to that user (hence no bytecode writing at run time).
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

WORKDIR /opt/dagster/app
USER 10001:10001

EXPOSE 3030

# Docker runs this check; Kubernetes ignores HEALTHCHECK and the chart sets its own readiness probe
# with the same command. A run pod (no gRPC server) is never probed this way.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["dagster", "api", "grpc-health-check", "-p", "3030"]

# The code server, for `docker run`. This is CMD on purpose, not ENTRYPOINT: the Helm chart and
# K8sRunLauncher set only the container's `args` (the chart builds them from
# `dagsterApiGrpcArgs`: ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m",
# "dw_pipelines.definitions"]; run pods get ["dagster", "api", "execute_run", ...]). Kubernetes
# `args` replace CMD but are appended to an ENTRYPOINT, so an ENTRYPOINT here would turn every
# run pod into `dagster api grpc ... dagster api execute_run ...` and break it.
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "dw_pipelines.definitions"]
