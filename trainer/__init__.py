"""kr's trainer: the image-to-LaTeX OCR training package that runs inside a Kaggle kernel.

Run it as ``python -m trainer``; ``python -m trainer.evaluate`` and ``python -m trainer.predict`` score and use a
checkpoint. This module imports nothing heavy, so tools can find the package without importing torch.
"""

FORMAT_VERSION = 1  # checkpoint format; bump when the checkpoint dict changes incompatibly
