# syntax=docker/dockerfile:1
# One image for every chatbeto process: `chatbeto run SERVICE`, `chatbeto migrate`, the admin CLI.
ARG PYTHON_VERSION=3.11

# --- build: install the project (not editable) into a venv that the runtime stage copies ---
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/chatbeto
ENV PATH=/opt/chatbeto/bin:$PATH
WORKDIR /src
# Dependencies first, so a code change does not reinstall them. setuptools finds the packages
# under shared/, services/*/ and tools/ (pyproject.toml, [tool.setuptools.packages.find]);
# tools/ holds the `chatbeto` command, the image's entrypoint.
COPY pyproject.toml README.m[d] ./
COPY shared ./shared
COPY services ./services
COPY tools ./tools
RUN pip install --upgrade pip \
    && pip install . \
    && chatbeto --help >/dev/null

# --- runtime: the venv and nothing else, run as an unprivileged user ---
FROM python:${PYTHON_VERSION}-slim AS runtime
LABEL org.opencontainers.image.title="chatbeto" \
      org.opencontainers.image.description="Self-hosted, event-driven gateway for teams that build on OpenAI"
RUN groupadd --system --gid 10001 chatbeto \
    && useradd --system --uid 10001 --gid chatbeto --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin chatbeto
COPY --from=build /opt/chatbeto /opt/chatbeto
# In a container the listeners must be reachable from outside the container's own loopback.
ENV PATH=/opt/chatbeto/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_HOST=0.0.0.0 \
    HEALTH_HOST=0.0.0.0
# Settings also come from a `.env` in the working directory: mount one at /app/.env if wanted.
WORKDIR /app
USER 10001:10001
# gateway; health ports of openai-worker, metrics-ingest, webhook
EXPOSE 8080 8081 8082 8083
ENTRYPOINT ["chatbeto"]
CMD ["run", "gateway"]
