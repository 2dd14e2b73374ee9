"""Prepare CelebA for `dataset=celeb_a` trials: `python -m celeb_smile.prepare_data --data-dir DIR`
(run by `make data` as a Kubernetes Job that writes into the tfds-data volume).

Where CelebA's download hosts cannot be reached it fails at once with one line, instead of
retrying for minutes: prepare it where it can be downloaded, then copy it into the volume."""

import argparse
import socket
import sys
import urllib.parse

DATASET = "celeb_a"
REACH_TIMEOUT_SECONDS = 10


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True, help="tensorflow-datasets data dir")
    parser.add_argument("--download-dir", help="scratch space for the downloads "
                                                "(default: DATA_DIR/downloads)")
    args = parser.parse_args(argv)

    import tensorflow_datasets as tfds
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # the outcome is one line, not warnings
    builder = tfds.builder(DATASET, data_dir=args.data_dir)
    if builder.is_prepared():
        print(f"{DATASET} is already prepared in {builder.data_dir}")
        return 0
    for host in sorted({urllib.parse.urlsplit(url).hostname for url in builder.url_infos}):
        problem = _unreachable(host)
        if problem:
            return _fail(f"{DATASET} cannot be downloaded here ({host}: {problem}); prepare it "
                         f"where it can be (`tfds build {DATASET} --data_dir DIR`) and copy DIR "
                         "into the tfds-data volume")
    try:
        builder.download_and_prepare(download_dir=args.download_dir)
    except Exception as error:  # e.g. the download host's quota: one line, not a traceback
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        return _fail(f"{DATASET} could not be prepared: {type(error).__name__}: {first_line}")
    print(f"{DATASET} prepared in {builder.data_dir}")
    return 0


def _unreachable(host: str) -> str | None:
    try:
        with socket.create_connection((host, 443), timeout=REACH_TIMEOUT_SECONDS):
            return None
    except OSError as error:
        return error.strerror or str(error)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
