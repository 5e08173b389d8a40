# tgmux in a container: the README's install on a slim Python, as a non-root user.
# Build: docker build -t tgmux .   Run: see docs/deploy.md (compose.yaml beside this file).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    TGMUX_CONFIG=/config/config.yaml

# uid and gid 10001: the Kubernetes example's runAsUser and fsGroup (docs/deploy.md)
RUN groupadd --gid 10001 tgmux && useradd --create-home --uid 10001 --gid 10001 tgmux
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY backends backends
COPY plugins plugins
# [voice]: PyAV, for voice notes (BambiSleep audio, tgmux.plugins.speak); see docs/telegram.md.
RUN pip install ".[voice]"

# A SQLite store (with the Telegram sessions) lives here (mode 0600, owned by tgmux).
RUN mkdir -p /data /config && chown tgmux:tgmux /data
VOLUME ["/data"]
WORKDIR /data
# numeric, so that Kubernetes' runAsNonRoot can tell it is not root
USER 10001:10001

# Healthy while /healthz answers; with no server.listen in the config there is nothing to ask,
# and the check passes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["tgmux", "healthcheck"]

ENTRYPOINT ["tgmux"]
CMD ["run"]
