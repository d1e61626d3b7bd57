FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# [otel]: tracing can be switched on with OTEL_* variables (nothing is imported while off).
RUN pip install --no-cache-dir --prefix=/install '.[otel]'

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 ingester \
 && mkdir -p /var/lib/ingester && chown ingester /var/lib/ingester
USER ingester
# The journal of events and deletes waiting for Redis must survive restarts: mount a volume.
ENV INGESTER_HOST=0.0.0.0 INGESTER_PORT=8020 INGESTER_STATE_DIR=/var/lib/ingester
VOLUME /var/lib/ingester
EXPOSE 8020
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8020/health/live', timeout=2)" || exit 1
ENTRYPOINT ["ingester-gateway"]
CMD ["serve"]
