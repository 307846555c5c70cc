"""Callbacks for the multi-process tests; a module of its own so that spawned processes can import them."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
from safetensors.torch import save_file


class DumpRankState(pl.Callback):
    """Each rank writes its parameters and the cells it trained on when training ends."""

    def __init__(self, directory: str):
        self.directory = directory
        self.cells: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.cells.setdefault(trainer.current_epoch, []).extend(batch["indices"].tolist())

    def on_train_end(self, trainer, pl_module):
        rank = trainer.global_rank
        state = {k: v.detach().cpu().contiguous() for k, v in pl_module.module.state_dict().items()}
        save_file(state, str(Path(self.directory) / f"rank{rank}.safetensors"))
        payload = {"world_size": trainer.world_size, "cells": self.cells}
        (Path(self.directory) / f"rank{rank}.json").write_text(json.dumps(payload))
