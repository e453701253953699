# The gateway with the bundled demo; the same install step as the README's (`pip install .`), in a build stage, so
# the image holds only the installed package, its dependencies and the demo config (no compiler, no pip cache, no
# sources). It is linted by hadolint in the tests; it cannot be built on the project's machines (no Docker engine).
#   docker build -t gateway . && docker run -p 8000:8000 gateway
# Mount your own repository and config instead of the demo:
#   docker run -p 8000:8000 -v $PWD/models:/models -v $PWD/gateway.yaml:/etc/gateway/gateway.yaml \
#     gateway serve --config /etc/gateway/gateway.yaml --host 0.0.0.0
# On Kubernetes: deploy/kubernetes (its probes replace the HEALTHCHECK, which Kubernetes ignores).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN python -m venv /opt/gateway \
    && /opt/gateway/bin/pip install --no-cache-dir .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="gateway" \
      org.opencontainers.image.description="Serves ONNX model versions over the Open Inference Protocol (V2 REST): traffic splits, shadows, progressive rollouts, drift and Prometheus metrics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/gateway/bin:$PATH
RUN useradd --system --no-create-home --uid 10001 --user-group gateway
COPY --from=build /opt/gateway /opt/gateway
WORKDIR /app
# The demo `gateway serve` serves with no arguments (and deploy/kubernetes/overlays/example copies its models).
COPY config ./config

USER 10001:10001
EXPOSE 8000
# Liveness on the default port; a container started with another --port needs its own check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/live', timeout=2)"]
ENTRYPOINT ["gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
