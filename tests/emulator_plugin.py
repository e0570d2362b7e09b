"""pytest fixtures around kaggle_runner.emulator (filled in with the emulator)."""
