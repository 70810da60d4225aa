# syntax=docker/dockerfile:1
# The Patchwarden image: `patchctl` (the controller, and `patchctl node-agent` in node Jobs) plus
# the stdlib-only agent zipapp at /opt/patchwarden/agent.pyz.
#   docker build -t ghcr.io/patchwarden/patchwarden:0.1.0 .
# Without a registry, `make image` (scripts/image) builds the same container from Debian's packages;
# tests/test_image.py keeps the two saying the same (entrypoint, user, workdir, env, ports, pins).
# The controller runs as uid 65532 with a read-only root filesystem (charts/patchwarden); node
# Jobs run the same image as root on the host they patch (set by the controller's Job manifest).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: wheels for the project and its dependencies, and the agent zipapp ------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE requirements.txt ./
COPY reconciler ./reconciler
COPY scripts/build-agent scripts/image ./scripts/
# The runtime closure of the lock, hashed (the dev tools it also pins stay out): the same
# pins `make image` installs.
RUN python3 scripts/image requirements > /runtime.txt \
 && pip wheel --require-hashes --wheel-dir /wheels -r /runtime.txt \
 && pip wheel --no-deps --wheel-dir /wheels . \
 && python3 scripts/build-agent /out/agent.pyz

# --- runtime --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    LC_ALL=C.UTF-8
# git + ssh for Git sources; libstdc++6 for numpy's wheels; util-linux (nsenter) is already in the base image for node Jobs.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client ca-certificates libstdc++6 \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels patchwarden
COPY --from=build /out/agent.pyz /opt/patchwarden/agent.pyz
RUN groupadd --system --gid 65532 patchwarden \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/patchwarden \
      --shell /usr/sbin/nologin patchwarden \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/patchwarden
USER 65532:65532
WORKDIR /var/lib/patchwarden
EXPOSE 8080
ENTRYPOINT ["patchctl"]
CMD ["controller", "--listen=0.0.0.0:8080"]
