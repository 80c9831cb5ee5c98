"""Released GLPs as compute sweeps, on the smoke profile's real artefacts (what the notebooks cannot test with their tiny
stand-ins): a trained smoke ladder rung exported in the authors' layout loads back with bit-identical outputs, and its
`epoch_N` checkpoints are the compute sweep of 10_probing and 14_downstream, giving the rung's own numbers. The layout,
names, YAML, read point, hub ids and the export on toy GLPs are tested in nbs/04_glp.ipynb, nbs/artefacts.ipynb,
nbs/10_probing.ipynb and nbs/14_downstream.ipynb. Skipped until `glp-reproduce --profile smoke` has made the artefacts."""
import math
import types
from functools import reduce
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from glp_nb import artefacts
from glp_nb.core import get_profile
from glp_nb.glp import export_glp, load_authors_glp, load_glp

RUN = "ladder_1"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    "(profile, rung folder, its checkpoints, the export of that rung in the authors' layout)."
    P = get_profile("smoke")
    rung = artefacts.glp_dir(P, RUN)
    cks = artefacts.list_ckpts(rung)
    if not cks or not (rung / "model.safetensors").exists(): pytest.skip(f"smoke {RUN} not trained yet ({rung})")
    out = export_glp(P, tmp_path_factory.mktemp("export") / "glp", run=RUN, log=lambda *a: None)
    return P, rung, cks, out


def test_export_loads_back_identical_on_real_activations(exported):
    P, rung, cks, out = exported
    _, val = artefacts.open_stores(P)
    x = val.sample(256, seed=0).float()
    t = torch.rand(256, generator=torch.Generator().manual_seed(0))
    E = reduce(math.gcd, [artefacts.ckpt_acts(c) for c in cks])
    for c in cks:
        ours, theirs = load_glp(c), load_authors_glp(out, f"epoch_{artefacts.ckpt_acts(c) // E}")
        assert theirs.info["acts"] == artefacts.ckpt_acts(c)
        with torch.no_grad():
            z = ours.normalizer.norm(x)
            assert torch.equal(theirs.normalizer.norm(x), z)
            assert torch.equal(theirs.denoiser(z, t), ours.denoiser(z, t))          # exact, not close
        assert torch.equal(theirs.meta_neurons(x[:64], t=0.1), ours.meta_neurons(x[:64], t=0.1))
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])["glp"]
    m = pd.read_csv(rung / "metrics.csv").drop_duplicates("acts", keep="last").set_index("acts")
    last = artefacts.ckpt_acts(cks[-1])
    assert (front["subject_model"], front["layer"], front["acts"]) == (P.model.name, artefacts.layer_of(P), last)
    assert front["flops"] == 6.0 * front["params"] * last and front["val_loss"] == pytest.approx(m.loc[last, "val_loss"], abs=1e-12)
    assert set(yaml.safe_load((out / "config.yaml").read_text())) <= {"model_name", "train_dataset", "epoch_size", "num_epochs",
                                                                      "save_epochs", "use_bf16", "glp_kwargs"}


def _cached_tasks(P):
    "10_probing's tasks from the probing cache (no LLM: a stand-in with the cache's name, layer and widths)."
    from glp_nb.probe import gather, profile_tasks
    f = next(iter(sorted((artefacts.data_dir() / "probe_cache").rglob("*.npz"))), None)
    if f is None: pytest.skip("no probing cache (run nbs/10_probing.ipynb with profile 'smoke')")
    with np.load(f) as z: d, d_mlp = z["resid"].shape[1], z["mlp"].shape[1]
    llm = types.SimpleNamespace(name=P.model.name, layer=artefacts.layer_of(P), d=d, d_mlp=d_mlp)
    try: data = gather(llm, profile_tasks(P), P.probe, progress=False)
    except Exception as e: pytest.skip(f"probing cache incomplete for the smoke tasks ({type(e).__name__})")
    return data, llm


def test_probing_sweep_over_released_checkpoints(exported):
    from glp_nb.probe import ckpt_runs, scaling_points
    P, rung, cks, out = exported
    data, llm = _cached_tasks(P)
    Pr = get_profile("smoke", scaling=dict(released=str(out)))
    runs, ladder = ckpt_runs(Pr)
    assert not ladder and list(runs) == [f"released--{out.name}"] and len(runs[f"released--{out.name}"]) == len(cks)
    rel = scaling_points(runs, data, P.probe, layer=llm.layer)
    ref = scaling_points({RUN: cks}, data, P.probe, layer=llm.layer)
    assert rel.acts.tolist() == ref.acts.tolist() == [artefacts.ckpt_acts(c) for c in cks]
    assert rel.flops.tolist() == (6.0 * rel.params * rel.acts).tolist() == ref.flops.tolist()
    assert np.isfinite(rel.mean_auc).all() and rel.ckpt.str.startswith("epoch_").all()
    assert rel.mean_auc.tolist() == ref.mean_auc.tolist()                                  # the same GLPs: the same AUCs
    with pytest.raises(ValueError, match=f"--set model.layer={llm.layer}"):
        scaling_points(runs, data, P.probe, layer=llm.layer + 1)


def test_downstream_table_over_released_checkpoints(exported):
    from glp_nb.downstream import ckpt_table
    P, rung, cks, out = exported
    Pr = get_profile("smoke", scaling=dict(released=str(out)))
    tab = ckpt_table(Pr)
    m = pd.read_csv(rung / "metrics.csv").drop_duplicates("acts", keep="last").set_index("acts")
    assert tab.acts.tolist() == [artefacts.ckpt_acts(c) for c in cks] and (tab.rung == -1).all()
    assert tab.flops.tolist() == (6.0 * tab.params * tab.acts).tolist()
    np.testing.assert_allclose(tab.val_loss, m.loc[tab.acts, "val_loss"], rtol=0, atol=1e-5)  # HeldOut recomputed = the training log
    ours = ckpt_table(get_profile("smoke", scaling=dict(released=str(rung))))                # a released folder in our layout
    assert ours.ckpt.tolist() == [c.name for c in cks] and ours.val_loss.tolist() == m.loc[ours.acts, "val_loss"].tolist()
