# acetrack image: one image for every role (worker, serve, sim, and the CLI).
#
#   docker build -t acetrack .
#   docker run --rm -e ACETRACK_REDIS_URL=redis://redis:6379/0 acetrack worker
#
# Dependencies come from requirements.lock (pip-compile --generate-hashes, pinned and hashed);
# the project itself is installed as a package into the same virtualenv, then the virtualenv
# alone is copied into a clean runtime stage. No secret is baked in: the API token and the
# webhook secret come at run time from the environment or /run/secrets (see .env.example).
# .ci/compose-check replays the build stage's steps in a temporary virtualenv.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: resolve nothing, install the locked wheels, then the project ------------------------
FROM ${PYTHON_IMAGE} AS build
ENV VIRTUAL_ENV=/opt/venv \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv "$VIRTUAL_ENV"
ENV PATH="$VIRTUAL_ENV/bin:$PATH"
WORKDIR /src
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY config ./config
COPY worker ./worker
RUN pip install --no-deps . && pip check && acetrack --help >/dev/null

# --- runtime: the virtualenv only, a non-root user ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="acetrack" \
      org.opencontainers.image.description="Completion tracker for Ace Data Cloud generation tasks" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 acetrack \
    && useradd --system --uid 10001 --gid acetrack --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin acetrack
COPY --from=build /opt/venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080 8090 9100
# The worker's probe (the default command): Redis answers and this container's worker beats.
# docker-compose.yml gives `serve` and `sim` probes of their own.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["acetrack", "check", "--local"]
ENTRYPOINT ["acetrack"]
CMD ["worker"]
