"""Shared fixtures. Every test module must leave the process as it found it: the GLP_NB_* and HOME environment variables,
torch's thread count and the working directory (tests change them only through glp_nb.core's temp_env / torch_threads /
isolated, or pytest's monkeypatch). A module that leaks fails here, naming what changed, and the state is put back."""
import os
from pathlib import Path
import pytest
import torch

WATCHED = ("GLP_NB_DATA", "GLP_NB_OUT", "HOME", "OMP_NUM_THREADS")


def _state():
    keys = set(WATCHED) | {k for k in os.environ if k.startswith("GLP_NB_")}
    return {k: os.environ.get(k) for k in keys}, torch.get_num_threads(), os.getcwd()


@pytest.fixture(autouse=True, scope="module")
def process_state_restored():
    env0, threads0, cwd0 = _state()
    yield
    env1, threads1, cwd1 = _state()
    changed = sorted(k for k in set(env0) | set(env1) if env0.get(k) != env1.get(k))
    for k in changed:                                  # put it back first, so one leaking module cannot fail the next ones
        if env0.get(k) is None: os.environ.pop(k, None)
        else: os.environ[k] = env0[k]
    if threads1 != threads0: torch.set_num_threads(threads0)
    if cwd1 != cwd0: os.chdir(cwd0)
    assert not changed and threads1 == threads0 and cwd1 == cwd0, (
        f"this test module left the process changed: env {[(k, env0.get(k), env1.get(k)) for k in changed]}, "
        f"torch threads {threads0} -> {threads1}, cwd {cwd0} -> {cwd1}")


@pytest.fixture
def user_dirs(tmp_path, monkeypatch):
    """A user whose HOME is a temporary folder and whose GLP_NB_DATA / GLP_NB_OUT point at non-default folders: (home, data, out).
    Fails if anything created the default data folder ~/.cache/glp_nb under that HOME."""
    home, data, out = tmp_path / "home", tmp_path / "data", tmp_path / "out"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home)); monkeypatch.setenv("GLP_NB_DATA", str(data)); monkeypatch.setenv("GLP_NB_OUT", str(out))
    yield home, data, out
    assert not (home / ".cache" / "glp_nb").exists(), f"the default data folder {home / '.cache' / 'glp_nb'} was used"


def pytest_collection_modifyitems(config, items):
    "test_chain runs first: its smoke chain leaves the smoke artefacts that later tests read (released-layout sweeps, OOD scoring, probing)."
    items.sort(key=lambda it: 0 if it.module.__name__.rsplit(".", 1)[-1] == "test_chain" else 1)   # stable: the rest keep their order
