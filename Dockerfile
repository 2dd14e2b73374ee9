# The training image: the project's code on python:3.11-slim with its pinned dependencies.
# Build and push with `make images`; MLproject's docker_env names the pushed tag.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOME=/home/trainer

# Dependencies first (their own layer, reused while only the code changes).
COPY pyproject.toml celeb_smile/pins.py /tmp/celeb-smile/
RUN python /tmp/celeb-smile/pins.py /tmp/celeb-smile/pyproject.toml > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 # Not needed to train or serve (~395 MB): TensorFlow's C++ headers (for building custom
 # ops), pandas' own test suite, and libclang (TensorFlow's op-generation tooling).
 && SITE=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && rm -rf "$SITE/tensorflow/include" "$SITE/pandas/tests" \
 && pip uninstall -y -q libclang \
 && rm -rf /tmp/celeb-smile /tmp/requirements.txt \
 && useradd --uid 10001 --create-home --home-dir /home/trainer trainer

# MLflow runs entry points from this directory (its docker backend's working directory).
WORKDIR /mlflow/projects/code
COPY MLproject train.py ./
COPY celeb_smile ./celeb_smile

USER 10001:10001
CMD ["python", "train.py", "--help"]
