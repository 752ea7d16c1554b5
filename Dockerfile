# fer-serve on the CPU: emotions over HTTP (POST /v1/predict) and the web page (GET /).
#   docker build -t fer-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/outputs:/models:ro" fer-serve ckpt_path=/models/<run>/checkpoints/best.ckpt
# Arguments after the image name are fer-serve options (key=value, see conf/serve.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NO_ALBUMENTATIONS_UPDATE=1

# OpenMP for torch, onnxruntime and the detectors; GLib for OpenCV.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# The CPU build of PyTorch (no CUDA libraries) in its own layer, kept when the code changes.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /src
COPY pyproject.toml README.md ./
COPY conf ./conf
COPY fer_lightning ./fer_lightning
# A regular (not editable) install: conf/ and the page ship inside the package.
RUN pip install ".[inference,serve]" && rm -rf /src

RUN useradd --create-home --uid 1000 fer
USER fer
WORKDIR /home/fer

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=8)"]
# Exec form: fer-serve is PID 1 and gets docker stop's SIGTERM (requests in flight finish).
ENTRYPOINT ["fer-serve", "host=0.0.0.0", "port=8000"]
CMD ["ckpt_path=/models/model.ckpt"]
