"""kr: train an image-to-LaTeX OCR model on Kaggle's free GPUs, unattended, across many sessions.

This package is the local half (CLI, configuration, rendering, backends, chain). It never imports torch;
the training code that runs inside a kernel lives in the sibling package ``trainer``.
"""

__version__ = "0.1.0"
