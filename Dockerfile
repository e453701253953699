# The gateway with the bundled demo; the same install step as the README's.
#   docker build -t gateway . && docker run -p 8000:8000 gateway
# Mount your own repository and config instead of the demo:
#   docker run -p 8000:8000 -v $PWD/models:/models -v $PWD/gateway.yaml:/etc/gateway/gateway.yaml \
#     gateway serve --config /etc/gateway/gateway.yaml --host 0.0.0.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 gateway
COPY config ./config

USER 10001
EXPOSE 8000
ENTRYPOINT ["gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
