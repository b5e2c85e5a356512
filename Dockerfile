# syntax=docker/dockerfile:1

# dnsd container image.
#
#   docker build -t ghcr.io/dnsd/dnsd:dev .
#
# The base image is pinned by tag. For bit-for-bit reproducible builds also
# pin the digest, e.g. FROM python:3.12-slim-bookworm@sha256:<digest>.

# --- build stage: install dnsd and its dependencies into a virtualenv -------
FROM python:3.12-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN python -m venv /opt/dnsd

WORKDIR /src
# The build context is filtered by .dockerignore (no .git, tests, bench, ...).
COPY . .
RUN /opt/dnsd/bin/pip install --no-cache-dir .

# --- node-setup stage: the init container of deploy/node-local/ -------------
# It adds the node cache's addresses to the node and its NOTRACK rules; dnsd
# itself needs neither tool nor capability for that:
#   docker build --target node-setup -t ghcr.io/dnsd/dnsd-node-setup:dev .
FROM debian:bookworm-slim AS node-setup
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2=6.1.0-3 iptables=1.8.9-2 \
 && rm -rf /var/lib/apt/lists/*

# --- runtime stage: only the interpreter and the virtualenv -----------------
FROM python:3.12-slim-bookworm

LABEL org.opencontainers.image.title="dnsd" \
      org.opencontainers.image.description="Kubernetes service-discovery DNS server"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH="/opt/dnsd/bin:${PATH}"

# Fixed numeric UID/GID so that Kubernetes can verify runAsNonRoot and the
# manifests in deploy/ can set runAsUser: 10001.
RUN groupadd --system --gid 10001 dnsd \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin dnsd

COPY --from=build /opt/dnsd /opt/dnsd

# Numeric, not the user name: the kubelet can only enforce runAsNonRoot
# against a numeric USER.
USER 10001:10001

# 1053: DNS (unprivileged port, no NET_BIND_SERVICE needed); the Service maps
# 53 -> 1053. 8080: /health, /ready and /metrics.
EXPOSE 1053/udp 1053/tcp 8080/tcp

ENTRYPOINT ["dnsd"]
CMD ["serve", "--kubernetes", "--address", "0.0.0.0", "--port", "1053", "--http-address", "0.0.0.0:8080"]
