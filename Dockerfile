FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 ingester
USER ingester
ENV INGESTER_HOST=0.0.0.0 INGESTER_PORT=8020
EXPOSE 8020
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8020/health/live', timeout=2)" || exit 1
ENTRYPOINT ["ingester-gateway"]
CMD ["serve"]
