# The training image: the project's code on python:3.11-slim with its pinned dependencies.
# Build and push with `make images`; MLproject's docker_env names the pushed tag.
# The base image: a tag by default; `make images PYTHON_IMAGE=python:3.11-slim@sha256:...` pins it
# by digest (README, "Images").
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOME=/home/trainer

# Dependencies first (their own layer, reused while only the code changes): the hashed lock of
# pyproject.toml's pins, indirect dependencies included (celeb_smile/pins.py --lock).
COPY requirements/train.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --require-hashes -r /tmp/requirements.lock \
 # Not needed to train or serve (~395 MB): TensorFlow's C++ headers (for building custom
 # ops), pandas' own test suite, and libclang (TensorFlow's op-generation tooling).
 && SITE=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && rm -rf "$SITE/tensorflow/include" "$SITE/pandas/tests" \
 && pip uninstall -y -q libclang \
 && rm /tmp/requirements.lock \
 && useradd --uid 10001 --create-home --home-dir /home/trainer trainer

# MLflow runs entry points from this directory (its docker backend's working directory).
WORKDIR /mlflow/projects/code
COPY MLproject train.py ./
COPY celeb_smile ./celeb_smile

USER 10001:10001
CMD ["python", "train.py", "--help"]
