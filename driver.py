"""Run a hyperparameter sweep of the celeb-smile project (see README and `--help`).

    python driver.py                      # small local sweep, tracked in ./mlflow.db
    python driver.py --backend kubernetes --grid convolutions=0,1,2 --param epochs=5
"""

from celeb_smile.sweep.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
