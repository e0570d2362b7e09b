"""The contract between kr (``kaggle_runner``), the kernel (``kr_kernel``) and the trainer (``trainer``).

What one side writes and another reads is defined here and nowhere else: file names and layout, stop reasons
and exit codes, atomic writes, the checkpoint tarball and its MANIFEST (writer and the one verifier), the
``kr-marker.json`` marker, the metric-line format of ``training.log``, ``run.json`` and ``trainer_result.json``,
and the progress heartbeat the kernel's watchdog reads (docs/architecture.md).

Standard library only: the kernel runs it before anything is installed, and the trainer ships it inside the
kernel script's archive. It imports nothing of ``kaggle_runner``, ``kr_kernel`` or ``trainer``.
"""

CONTRACT_VERSION = 1
