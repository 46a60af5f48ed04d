# The one image of the Ami demo: control plane, proxies and the Bookinfo apps (compose.yaml).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# Dependencies first, so editing the code does not re-install them.
COPY pyproject.toml README.m[d] ./
COPY proxy/__init__.py proxy/
COPY meshctl/__init__.py meshctl/
COPY sample_apps/__init__.py sample_apps/
RUN pip install . && pip uninstall -y ami-mesh
COPY . .
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app ami \
    && mkdir -p /mesh/ca /mesh/controlplane /mesh/bootstrap && chown -R ami /mesh
USER ami
CMD ["meshctl", "--help"]
