"""Write the HDF5 fixtures of ``tests/test_hdf5.py`` with libhdf5 itself.

Not run by the tests (``h5py`` is not a dependency of the product): run once in a scratch
environment, ``pip install h5py numpy && python tests/data/make_hdf5_fixtures.py
tests/data``; h5py 3.16 / HDF5 2.0.0 wrote the committed files. The model mimics JUDI's
layout as HDF5.jl writes it: squared slowness ``m`` and ``m0`` (s²/km²) stored Julia
``[nx, nz]``, i.e. ``[nz, nx]`` row-major, spacing ``d`` and origin ``o`` in m.
"""

import sys

import h5py
import numpy as np

out = sys.argv[1]
nx, nz = 16, 10
x = np.arange(nx)[None, :]
z = np.arange(nz)[:, None]
v = 1.5 + 0.1 * z + 0.01 * x  # km/s, [nz, nx]
m = (1.0 / v**2).astype(np.float32)
with h5py.File(f"{out}/judi_model.h5", "w") as f:  # the default (earliest) format, contiguous
    f["m"] = m
    f["m0"] = (1.0 / (1.5 + 0.1 * z + 0 * x) ** 2).astype(np.float32)
    f["d"] = np.array([10.0, 10.0])
    f["o"] = np.array([100.0, 40.0])
    f["n"] = np.array([nx, nz], dtype=np.int64)
    f["big_endian"] = np.arange(6, dtype=">f8").reshape(2, 3)
    f["scalar"] = np.float32(2.5)
    f.create_group("extra")
with h5py.File(f"{out}/judi_chunked.h5", "w") as f:
    f.create_dataset("m", data=m, chunks=(5, 4), compression="gzip")
    f["d"] = np.array([10.0, 10.0])
with h5py.File(f"{out}/judi_latest.h5", "w", libver="latest") as f:
    f["m"] = m
    f["d"] = np.array([10.0, 10.0])
with h5py.File(f"{out}/many.h5", "w") as f:  # the root B-tree spans several symbol nodes
    for i in range(40):
        f[f"a{i:02d}"] = np.full(3, i, dtype=np.int32)
np.save(f"{out}/judi_model_expected.npy", m)
