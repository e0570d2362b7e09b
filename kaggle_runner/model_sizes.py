"""How big each model size's checkpoints are, without torch: a table of the trainer's parameter counts.

``trainer.model.ImageToLatex`` has ``fixed + vocab_size * d_model`` parameters (the token embedding and the
output head share one matrix). ``tests/test_check.py`` builds the real model of every size and checks this
table, so a change of the architecture that forgets it fails there.

Bytes per parameter in the files kr moves (fp32 everywhere; bench/README.md, "Checkpoint size", measured
485.1 MB for the base model's tarball, 121.3 MB for its ``BEST_``):

- ``last.pth.tar``: weights + AdamW's two moments = 12 bytes, plus a little (scaler, RNG, loss window);
- ``BEST_...pth.tar``: the weights alone = 4 bytes;
- ``checkpoints.tar.gz`` holds both, stored (gzip level 0): 16 bytes;
- an epoch checkpoint is a full state like ``last``: 12 bytes.
"""

from __future__ import annotations

# size (kr_contract.names.MODEL_SIZES) -> (parameters without the embedding, d_model); tests/test_check.py
# checks both against the real model.
MODEL_PARAMETERS: dict[str, tuple[int, int]] = {
    "tiny": (239_152, 64),
    "small": (4_352_992, 256),
    "base": (29_989_312, 512),
}
# The vocabulary is built from the training split; LaTeX token sets stay in the hundreds. Estimates use this
# upper bound, so they err on the large side.
VOCAB_UPPER_BOUND = 1000
TARBALL_BYTES_PER_PARAMETER = 16
FULL_STATE_BYTES_PER_PARAMETER = 12
WEIGHTS_BYTES_PER_PARAMETER = 4
# Trainer defaults (trainer/config.py): epoch checkpoints and timestamped tarballs kept in the working dir.
KEEP_EPOCHS = 5
KEEP_TARBALLS = 3


def parameters(model_size: str, vocab_size: int = VOCAB_UPPER_BOUND) -> int:
    fixed, d_model = MODEL_PARAMETERS[model_size]
    return fixed + vocab_size * d_model


def tarball_bytes(model_size: str) -> int:
    """An upper estimate of ``checkpoints.tar.gz``: what each session downloads and publishes."""
    return parameters(model_size) * TARBALL_BYTES_PER_PARAMETER


def working_dir_bytes(model_size: str, keep_epochs: int = KEEP_EPOCHS, keep_tarballs: int = KEEP_TARBALLS) -> int:
    """An upper estimate of what the trainer keeps in the session's working directory at most: ``last``,
    ``BEST_``, ``keep_epochs`` epoch checkpoints, the tarball and ``keep_tarballs`` timestamped ones."""
    full, weights = FULL_STATE_BYTES_PER_PARAMETER, WEIGHTS_BYTES_PER_PARAMETER
    per_parameter = full + weights + keep_epochs * full + (1 + keep_tarballs) * TARBALL_BYTES_PER_PARAMETER
    return parameters(model_size) * per_parameter
