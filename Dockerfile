# import-status-bot: one image for `serve` (default), `socket`, `migrate` and `status`.
#
#   docker build -t import-status-bot .
#   docker run -d -p 3000:3000 -v import-status-data:/data \
#     -e SLACK_BOT_TOKEN -e SLACK_SIGNING_SECRET \
#     -e MYPREFERENCES_CLIENT_ID -e MYPREFERENCES_AUTHORIZATION import-status-bot
#
# tests/test_deploy.py builds the same wheel and runs the same command line,
# migration and health check outside Docker.

# --- builder: the project as a wheel (Alembic scripts included as bot/migrations) ---
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime: the wheel and its dependencies, run as an unprivileged user ---
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

COPY --from=builder /wheels /tmp/wheels
# The project's wheel; pip resolves its dependencies within pyproject.toml's bounds.
RUN pip install --no-cache-dir --disable-pip-version-check /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && groupadd --system --gid 10001 import-status \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin import-status \
    && mkdir /data \
    && chown 10001:10001 /data

# SQLite lives on the volume; point DATABASE_URL at PostgreSQL to run several replicas.
ENV DATABASE_URL=sqlite:////data/import-status-bot.db \
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
