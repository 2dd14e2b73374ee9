"""Train the CelebA 'Smiling' CNN and log it to MLflow. Flags mirror MLproject's parameters.

    python train.py --epochs 2 --dataset synthetic
"""

from celeb_smile.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
