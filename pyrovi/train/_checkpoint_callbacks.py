"""The callbacks that make a fit resumable: the checkpoint of every epoch, and the random generators' states."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from .._errors import ModelFileError
from .._files import file_kind
from ._checkpoint import is_pyrovi_checkpoint


#: file name of the checkpoint written after every epoch into ``checkpoint_dir``
LAST_CHECKPOINT = "last.ckpt"


def check_replaceable_checkpoint(dirpath: str | os.PathLike) -> None:
    """Refuse a ``checkpoint_dir`` whose ``last.ckpt`` pyrovi did not write: the first epoch would replace it.

    A pyrovi checkpoint there (an earlier run's, the one being resumed) is replaced, as checkpoint_dir promises.
    """
    path = Path(dirpath) / LAST_CHECKPOINT
    if not os.path.lexists(path):
        return
    kind = file_kind(os.lstat(path).st_mode)
    if kind is not None:
        raise FileExistsError(
            f"{path} exists and is {kind}, not a pyrovi checkpoint; training with checkpoint_dir={str(dirpath)!r} "
            f"would replace it with its checkpoint after the first epoch. Move it away or choose another checkpoint_dir."
        )
    if not is_pyrovi_checkpoint(path):
        raise FileExistsError(
            f"{path} exists and is not a pyrovi checkpoint (a file of your own?); training with "
            f"checkpoint_dir={str(dirpath)!r} would replace it with its checkpoint after the first epoch, and pyrovi "
            "never replaces files it did not write. Move it away or choose another checkpoint_dir."
        )


def last_checkpoint_callback(dirpath: str | os.PathLike) -> ModelCheckpoint:
    """Lightning's ModelCheckpoint writing ``dirpath/last.ckpt`` at the end of every training epoch.

    ``monitor=None`` with one kept file: the latest epoch, overwritten (atomically, by SafeCheckpointIO)
    every epoch. It saves in the epoch's end hooks after the training plan's own (Lightning runs
    checkpointing callbacks after the module's hook), so the file holds the epoch's metrics, its learning
    rate scheduler step (which the plan takes there, see ``TrainingPlan.lr_scheduler_step``) and the random
    state with which the next epoch starts.
    """
    check_replaceable_checkpoint(dirpath)
    return ModelCheckpoint(
        dirpath=dirpath,
        filename=LAST_CHECKPOINT[: -len(".ckpt")],
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )


class RandomGeneratorStates(pl.Callback):
    """Keep the random generators' states in checkpoints, so that a resumed run draws what the first would.

    The guide's samples, dropout masks and Pyro's draws come from torch's generators; numpy's and Python's
    are kept too for user code. Restored after Lightning's ``setup`` (which draws once to create lazy
    parameters), right before training continues.
    """

    @property
    def state_key(self) -> str:
        # the key of its state in a checkpoint's callbacks: fixed, so that every pyrovi checkpoint resumes
        return "_RandomState"

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "random": random.getstate()}
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # a forged state fails here with a clear error, before any generator is changed
        try:
            torch_state = state_dict["torch"]
            version, internal, gauss = state_dict["random"]
            npy = state_dict["numpy"]
            numpy_state = (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                           npy["cached_gaussian"])
            if not (isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8):
                raise TypeError("the torch generator state is not a uint8 tensor")
            # apply to throw-away generators first: a malformed state must not leave the real ones half set
            torch.Generator().set_state(torch_state)
            random.Random().setstate((version, tuple(internal), gauss))
            np.random.RandomState().set_state(numpy_state)
        except Exception as err:  # noqa: BLE001 - whatever a forged state provokes
            raise ModelFileError(
                f"The checkpoint's random generator state is malformed ({type(err).__name__}: {err}); the file is "
                "corrupt or forged. Resume from another checkpoint, or train afresh."
            ) from err
        torch.set_rng_state(torch_state)
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state(numpy_state)
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
