"""Activation stores built from arrays, shared by the tests that need a store without a model (test_train, test_reliability)."""
from pathlib import Path
import numpy as np
from glp_nb.core import save_json
from glp_nb.harvest import FORMAT, Store, save_stats, shard_moments, to_bits, write_shard


def array_store(X, path, shard=1000, complete=True) -> Store:
    "Rows `X` [n, d] written in the activation-store format at `path`, opened."
    path = Path(path); path.mkdir(parents=True, exist_ok=True); shards, mom = [], []
    for k, i in enumerate(range(0, len(X), shard)):
        u = to_bits(X[i:i + shard]); name = f"shard_{k:05d}.npy"
        shards.append(dict(file=name, rows=len(u), sha256=write_shard(path / name, u))); mom.append(shard_moments(u, 4096))
    save_stats(path / "stats.npz", [m[0] for m in mom], np.stack([m[1] for m in mom]), np.stack([m[2] for m in mom]))
    save_json(dict(format=FORMAT, model="random", layer=0, d=X.shape[1], dtype="bfloat16", split=path.name, shards=shards,
                   complete=complete, harvest=dict(n_acts=10**6), rows=len(X)), path / "manifest.json")
    return Store(path)
