"""celeb-smile: a Keras CNN for CelebA 'Smiling' as an MLflow project, with sweeps on Kubernetes."""

IMAGE_SHAPE = (218, 178, 3)  # CelebA's aligned images: height, width, RGB
