"""Lightning CheckpointIO that writes every checkpoint atomically (temp file + fsync + rename)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from refedit.utils.checkpoint import atomic_torch_save, read_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    def __init__(self, expect_method: str | None = None):
        super().__init__()
        self.expect_method = expect_method  # 'module.Class' of the method being trained: resume only its own

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        return read_checkpoint(path, map_location=map_location or "cpu", expect_method=self.expect_method,
                               training_checkpoint=False)
