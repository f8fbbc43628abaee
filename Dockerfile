# syntax=docker/dockerfile:1
#
# Two stages: the builder installs the bot and its runtime dependencies into a venv at
# /opt/venv with scripts/build-runtime.sh (the same script CI runs in
# scripts/check-docker.sh, since CI has no Docker engine); the final image holds only
# that venv on a fresh python:3.11-slim, runs as a non-root user, and has no compilers,
# no pip cache and no source tree beyond the installed package.
#
# Build:  docker build -t llm-discord-bot .
# Run:    docker compose up -d   (see docker-compose.yml)
#
# The config file is expected read-only at /app/config.toml. For the HEALTHCHECK to pass,
# it must contain:
#     [health]
#     enabled = true
#     port = 8080
#     host = "0.0.0.0"   # only needed to reach /metrics from outside the container
# The data directory (/app/data: the embedded Redis when no REDIS_URL is set) is a volume.

FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml ./
COPY bot ./bot
COPY cogs ./cogs
COPY scripts/build-runtime.sh ./scripts/build-runtime.sh
RUN bash scripts/build-runtime.sh /opt/venv


FROM python:3.11-slim

# The venv must live at the same path as in the builder: its scripts' shebangs and
# pyvenv.cfg name /opt/venv.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BOT_CONFIG=/app/config.toml

# A fixed uid/gid, so file ownership on bind-mounted volumes is predictable.
RUN groupadd --system --gid 10001 bot \
    && useradd --system --uid 10001 --gid bot --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin bot

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Owned by the bot user, so a fresh named volume mounted here is writable too.
RUN mkdir -p /app/data && chown bot:bot /app/data
VOLUME ["/app/data"]

# Numeric, so runtimes that check "runAsNonRoot" can verify it without /etc/passwd.
USER 10001:10001

EXPOSE 8080

# No curl in slim images: the probe is stdlib Python. ProxyHandler({}) ignores any
# HTTP(S)_PROXY in the environment, which would otherwise route 127.0.0.1 to a proxy.
# urlopen raises (exit 1) on a connection error or on the 503 /healthz returns when the
# gateway or Redis check fails.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8080/healthz', timeout=4)"]

CMD ["python", "-m", "bot", "run"]
