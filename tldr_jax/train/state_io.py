"""Train-state checkpoints (orbax ``CheckpointManager``: arrays plus a JSON record) and the export of a
model in the :func:`tldr_jax.load` format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tldr_jax import checkpoint
from tldr_jax.api import Params
from tldr_jax.train.step import TrainState

__all__ = ["StateCheckpoints", "export_model"]


class StateCheckpoints:
    """orbax ``CheckpointManager`` of the train state (arrays) plus a JSON record (synchronous saves)."""

    def __init__(self, directory: str | Path, max_to_keep: int):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self.manager = ocp.CheckpointManager(
            Path(directory).resolve(), options=options, item_names=("state", "record")
        )

    def latest_step(self) -> int | None:
        """The step of the newest saved state, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, record: dict[str, Any]) -> None:
        """Save ``state`` and ``record`` as ``step`` (synchronously)."""
        args = self.ocp.args.Composite(
            state=self.ocp.args.StandardSave(_state_dict(state)), record=self.ocp.args.JsonSave(record)
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """The state (shaped like ``like``) and record saved at ``step``."""
        target = jax.tree_util.tree_map(self.ocp.utils.to_shape_dtype_struct, _state_dict(like))
        args = self.ocp.args.Composite(
            state=self.ocp.args.StandardRestore(target), record=self.ocp.args.JsonRestore()
        )
        out = self.manager.restore(step, args=args)
        # orbax returns arrays committed to a device; fresh ones are uncommitted, and jit would compile
        # the train step again for the difference. Rebuild them the way a fresh state is built.
        state = jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)), out["state"])
        return TrainState(state["step"], state["tree"], state["opt_state"]), out["record"]

    def close(self) -> None:
        """Finish pending writes and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def _state_dict(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "tree": state.tree, "opt_state": state.opt_state}


def export_model(params: Params, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``params`` with :func:`tldr_jax.checkpoint.save` (replacing an earlier export)."""
    return Path(checkpoint.save(params, path, metadata={"finetune": metadata}, overwrite=True))
