# import-status-bot: one image for `serve` (default), `socket`, `migrate` and `status`.
#
#   docker build -t import-status-bot .
#   docker run -d --read-only -p 3000:3000 -v import-status-data:/data \
#     -e SLACK_BOT_TOKEN -e SLACK_SIGNING_SECRET \
#     -e MYPREFERENCES_CLIENT_ID -e MYPREFERENCES_AUTHORIZATION import-status-bot
#
# The root filesystem can be read-only: the bot writes only to the /data volume (the
# SQLite database, and temporary files under TMPDIR=/data/tmp).
# tests/test_deploy.py builds the same wheel and runs the same command line,
# migration and health check outside Docker; .ci/image-check builds and runs the image.

# --- builder: the locked dependencies and the project's wheel, in a virtualenv ---
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# strip: the wheels' shared objects keep their symbol tables (about 16 MB of the image).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Exactly the versions the tests ran against (hash-checked, wheels only, nothing
# resolved here); this layer is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-cache-dir --require-hashes \
       --no-deps --only-binary=:all: -r requirements.lock \
    && find /opt/venv -name '*.so*' -type f -exec strip --strip-unneeded {} +
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && pip --python /opt/venv/bin/python install --no-cache-dir --no-deps /wheels/*.whl

# --- runtime: the virtualenv alone (no pip in it, no wheels, no caches), unprivileged ---
FROM python:3.11-slim

RUN groupadd --system --gid 10001 import-status \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin import-status \
    && mkdir -p /data/tmp \
    && chown -R 10001:10001 /data
COPY --from=builder /opt/venv /opt/venv

# SQLite lives on the volume; point DATABASE_URL at PostgreSQL to run several replicas.
# Temporary files go to the volume too, so a read-only root needs no tmpfs (tempfile
# falls back to the working directory, /data, when a bind mount lacks tmp/).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATABASE_URL=sqlite:////data/import-status-bot.db \
    TMPDIR=/data/tmp \
    HOST=0.0.0.0 \
    PORT=3000
VOLUME /data
WORKDIR /data
# Numeric, so a runtime (e.g. Kubernetes runAsNonRoot) can tell it is not root.
USER 10001:10001

EXPOSE 3000
# python:3.11-slim has no curl; a non-200 /healthz or no answer makes urlopen raise.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '3000'), timeout=3)"]

ENTRYPOINT ["import-status-bot"]
CMD ["serve"]
