"""colorbench: compare how image-colorization models should be trained, every run logged to MLflow."""

__version__ = "0.1.0"
