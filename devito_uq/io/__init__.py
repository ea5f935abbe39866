"""devito_uq.io: SEG-Y shot records and images, HDF5 models, verified training checkpoints.

Names resolve lazily (PEP 562): ``import devito_uq.io.checkpoint`` loads neither
Devito nor segyio; ``from devito_uq.io import read_shots`` loads the SEG-Y module
(and, through :class:`~devito_uq.physics.Survey`, Devito) on first use.
"""

from __future__ import annotations

from devito_uq._lazy import lazy_exports

_WHERE = {
    "read_shots": "devito_uq.io.segy",
    "write_shots": "devito_uq.io.segy_write",
    "segy_info": "devito_uq.io.segy_inspect",
    "format_segy_info": "devito_uq.io.segy_inspect",
    "write_image": "devito_uq.io.segy_image",
    "read_image": "devito_uq.io.segy_image",
    "read_velocity": "devito_uq.io.segy_image",
    "read_hdf5": "devito_uq.io.hdf5",
    "read_hdf5_model": "devito_uq.io.hdf5",
    "check_image": "devito_uq.io.segy_image",
    "image_quantity": "devito_uq.io.segy_image",
    "save_checkpoint": "devito_uq.io.checkpoint",
    "load_checkpoint": "devito_uq.io.checkpoint",
    "check_identity": "devito_uq.io.checkpoint",
    "checkpoint_exists": "devito_uq.io.checkpoint",
    "simulate_dataset": "devito_uq.io.dataset",
    "ShardedDataset": "devito_uq.io.dataset",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _WHERE)
