# newsbot: a small image running the bot as an unprivileged user.
#   docker build -t newsbot .
#   docker run -v /srv/newsbot:/data -e NEWSBOT_ACCESS_TOKEN=... newsbot
# /data holds config.yaml and the state (set storage.path: /data/state in the config).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
RUN pip install . && useradd --system --uid 10001 --home-dir /data newsbot \
    && mkdir -p /data && chown newsbot /data

USER newsbot
VOLUME ["/data"]
ENTRYPOINT ["newsbot"]
CMD ["run", "-c", "/data/config.yaml"]
