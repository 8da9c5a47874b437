# newsbot: a small image running the bot as an unprivileged user.
#   docker build -t newsbot .
#   docker run -v /srv/newsbot:/data -e NEWSBOT_ACCESS_TOKEN=... --stop-timeout 30 newsbot
# /data holds config.yaml and the state (set storage.path: /data/state in the config).
#
# Its health check asks the bot's own listener, so the config it expects has
#   http:
#     listen: 0.0.0.0:9180      # or 127.0.0.1:9180 when nothing outside the container asks
# Listening elsewhere: set NEWSBOT_HEALTH_URL; without a listener, set it empty (no check).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    NEWSBOT_HEALTH_URL=http://127.0.0.1:9180/healthz
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
RUN pip install . && useradd --system --uid 10001 --home-dir /data newsbot \
    && mkdir -p /data && chown newsbot /data

USER newsbot
VOLUME ["/data"]
EXPOSE 9180
# Python's own urllib (the image has no curl): healthy on 200; on a 503 the reasons the
# bot gave (e.g. "sync: stopped") land in `docker inspect`'s health log.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.error, urllib.request\nurl = os.environ.get('NEWSBOT_HEALTH_URL')\ntry:\n    url and urllib.request.urlopen(url, timeout=8)\nexcept urllib.error.HTTPError as e:\n    sys.exit(f'{e.code}: ' + e.read(2000).decode(errors='replace'))\nexcept OSError as e:\n    sys.exit(f'{url}: {e}')"]
# Exec form: newsbot is PID 1 and gets SIGTERM itself; it stops polling, lets the sends
# in flight finish (10 s at most) and exits. Give `docker stop` more than that (30 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["newsbot"]
CMD ["run", "-c", "/data/config.yaml"]
