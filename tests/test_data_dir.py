"""Every path the chain uses follows $GLP_NB_DATA and $GLP_NB_OUT: nothing is read from or written to the default ~/.cache/glp_nb
when they are set, and a notebook's test cells leave the user's environment (GLP_NB_DATA above all) as they found it.
HOME points at a temporary folder throughout, so a stray use of the default folder shows up as <tmp>/home/.cache/glp_nb."""
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest
import torch
from glp_nb.core import HarvestCfg, get_profile, data_dir, fig_dir, run_dir, out_dir, torch_threads

ROOT = Path(__file__).resolve().parents[1]


def _under(p, root) -> bool:
    p, root = Path(p).resolve(), Path(root).resolve()
    return p == root or root in p.parents


def test_stage_paths_follow_glp_nb_data(user_dirs):
    home, data, out = user_dirs
    from glp_nb.models import tiny_llm, model_cache
    from glp_nb.corpus import corpus_root
    from glp_nb.artefacts import store_dir, glp_dir, sae_dir, rung_dir, probe_cache
    assert Path.home() == home and data_dir() == data and out_dir() == out
    P, Pc, llm = get_profile("smoke"), get_profile("cpu"), tiny_llm()
    for p in [data_dir(), model_cache("gemma3-270m"), corpus_root(), store_dir(P, "train"), store_dir(Pc, "val"), store_dir(P, "train", llm),
              glp_dir(P), glp_dir(Pc, "ladder_2"), rung_dir(P, 0), sae_dir(P), probe_cache(llm, "92_glue_sst2", P.probe)]:
        assert _under(p, data), p
    for p in [fig_dir("smoke"), fig_dir("cpu"), fig_dir("gpu"), run_dir("smoke")]:
        assert _under(p, out), p


def test_stages_look_for_artefacts_under_glp_nb_data(user_dirs):
    "A later stage whose input is missing names the folder it looked in: the user's, never the default one."
    home, data, out = user_dirs
    from glp_nb.artefacts import open_stores, load_main_glp, load_main_sae, glp_ckpts, ladder_runs
    from glp_nb.neurons import probing_results
    from glp_nb.scaling import rung_points
    P = get_profile("smoke")
    for fn, root in [(lambda: open_stores(P), data), (lambda: load_main_glp(P), data), (lambda: load_main_glp(P, "ladder_0"), data),
                     (lambda: load_main_sae(P), data), (lambda: glp_ckpts(P), data), (lambda: rung_points(P, 0, 100), data),
                     (lambda: probing_results(P), out)]:
        with pytest.raises(FileNotFoundError) as e: fn()
        assert str(root) in str(e.value), e.value
    assert ladder_runs(P) == []


@torch_threads(1)
def test_harvest_train_and_reload_under_glp_nb_data(user_dirs):
    "A tiny store harvested at store_dir(P), a GLP trained at glp_dir(P): written under GLP_NB_DATA and found there by the next stage."
    home, data, out = user_dirs
    from glp_nb.models import tiny_llm
    from glp_nb.harvest import harvest, Store
    from glp_nb.train import train_glp
    from glp_nb.artefacts import store_dir, glp_dir, load_main_glp
    P = get_profile("smoke", glp=dict(depth=1, d_model=16, d_mlp=32),
                    train=dict(batch_size=64, n_acts=256, n_ckpts=1, eval_every=10, eval_acts=64))
    llm, cfg = tiny_llm(), HarvestCfg(max_len=32, block_docs=4, shard_acts=100, batch_tokens=128)
    texts = [f"document {i}: " + "words of a tiny corpus " * (1 + i % 3) for i in range(40)]
    stores = [harvest(llm, [(f"{s}{i}", t) for i, t in enumerate(texts)], store_dir(P, s, llm), cfg, n, s, {"source": "test"}, verbose=False)
              for s, n in (("train", 600), ("val", 150))]
    assert all(_under(s.path, data) for s in stores)
    train_glp(P, *stores, glp_dir(P), progress=False, log=lambda *a: None)
    assert _under(glp_dir(P), data) and load_main_glp(P).d == llm.d
    assert Store(store_dir(P, "train", llm)).n == stores[0].n


NB_SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    from pathlib import Path
    from nbdev.test import test_nb
    def state(): return {k: os.environ.get(k) for k in ("GLP_NB_DATA", "GLP_NB_OUT", "HOME")}, torch.get_num_threads(), os.getcwd()
    before, out = state(), {}
    for nb in sys.argv[1:]:
        ok, secs = test_nb(Path(nb))
        out[nb] = dict(ok=ok, secs=secs, same=state() == before, after=state())
    print(json.dumps(dict(before=before, runs=out)))
""")


def test_notebook_tests_leave_the_users_env(tmp_path):
    "Run the test cells of notebooks that use temporary data/output folders (nbdev's runner, in a fresh process) with the user's GLP_NB_DATA set."
    home, data = tmp_path / "home", tmp_path / "user_data"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLP_NB_")}
    env.update(HOME=str(home), GLP_NB_DATA=str(data), OMP_NUM_THREADS="1")
    nbs = [str(ROOT / "nbs" / n) for n in ("00_core.ipynb", "07_scaling.ipynb")]
    r = subprocess.run([sys.executable, "-c", NB_SCRIPT, *nbs], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    for nb, run in res["runs"].items():
        assert run["ok"], (nb, r.stderr[-4000:])
        assert run["same"], f"{nb} left the process changed: {res['before']} -> {run['after']}"
    assert res["before"][0]["GLP_NB_DATA"] == str(data) and res["before"][0]["GLP_NB_OUT"] is None
    assert not (home / ".cache" / "glp_nb").exists(), "a notebook's tests used the default data folder"
