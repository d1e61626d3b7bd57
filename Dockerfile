FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY src ./src
# The versions CI tested (constraints.txt, `make lock`), not whatever is newest today;
# [otel]: tracing can be switched on with OTEL_* variables (nothing is imported while off).
RUN pip install --no-cache-dir --prefix=/install -c constraints.txt '.[otel]'

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 ingester \
 && mkdir -p /var/lib/ingester /var/lib/ingester-tus \
 && chown ingester /var/lib/ingester /var/lib/ingester-tus
USER ingester
# The journal of events and deletes waiting for Redis must survive restarts: mount a volume.
# Resumable uploads stage in INGESTER_TUS_DIR: a volume shared by the gateways.
ENV INGESTER_HOST=0.0.0.0 INGESTER_PORT=8020 INGESTER_STATE_DIR=/var/lib/ingester \
    INGESTER_TUS_DIR=/var/lib/ingester-tus
VOLUME /var/lib/ingester /var/lib/ingester-tus
EXPOSE 8020
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('INGESTER_PORT', '8020'), timeout=2)" || exit 1
ENTRYPOINT ["ingester-gateway"]
CMD ["serve"]
