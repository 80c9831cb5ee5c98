"""The smoke profile runs the whole numbered chain with papermill, end to end, on the real packaged model."""
import json, os, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    env = {**os.environ, "GLP_NB_OUT": str(out)}
    t0 = time.time()
    r = subprocess.run(["glp-reproduce", "--profile", "smoke"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1800)   # a hang guard: ~5 min alone, up to ~20 on 2 contended cores
    return out, r, time.time() - t0

def test_smoke_chain_runs(smoke_run):
    out, r, secs = smoke_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    nbs = sorted(p.name for p in (ROOT / "nbs").glob("[0-9][0-9]_*.ipynb"))
    ran = sorted(p.name for p in (out / "runs" / "smoke").glob("*.ipynb"))
    assert ran == nbs
    timings = json.loads((out / "runs" / "smoke" / "timings.json").read_text())
    assert set(timings["seconds"]) == set(nbs)

def test_smoke_figures_have_json(smoke_run):
    out, r, _ = smoke_run
    figs = out / "runs" / "smoke" / "figures"
    pngs = sorted(figs.glob("*.png"))
    assert pngs, "the smoke chain made no figures"
    for p in pngs:
        j = json.loads(p.with_suffix(".json").read_text())
        assert j["meta"]["profile"] == "smoke" and p.stat().st_size > 5000
    # the committed figures/ folder is never touched by the smoke profile
    assert not (out / "figures").exists()

def test_smoke_chain_skips_test_cells_and_builds_report(smoke_run):
    "The chain runs pipelines, not test cells (they are `make test`'s), and ends with a report whose figures load in Chromium."
    from glp_nb.report import check_report
    out, r, _ = smoke_run
    ex = json.loads((out / "runs" / "smoke" / "03_harvest.ipynb").read_text())
    assert any("test-skipped-by-chain" in c.get("metadata", {}).get("tags", []) for c in ex["cells"])
    assert "TCP without encryption" not in r.stdout + r.stderr      # kernel noise goes to runs/<profile>/logs
    page = out / "runs" / "smoke" / "report.html"
    chk = check_report(page)
    assert chk["loaded"] and chk["results_table"] and chk["images"] and not chk["broken"], chk

def test_gpu_quick_runs_end_to_end_at_tiny_sizes(tmp_path):
    """`gpu-quick`'s twin on this CPU: the stages that make its summary (harvest, training) and the streamed GLP run, no stage outside
    the profile runs, and the summary (harvest tok/s, training MFU) is written. Stages 06-10 run the smoke chain's code at smoke sizes,
    so the test skips them (`--only`) to keep `make test` within its budget; `make gpu-quick-tiny` runs them all."""
    import re
    from glp_nb.core import get_profile
    env = {**os.environ, "GLP_NB_OUT": str(tmp_path)}
    only = r"^(03|05|11|16)_"    # 11 is outside the profile: asked for, it must still not run
    r = subprocess.run(["glp-reproduce", "--profile", "gpu-quick-tiny", "--only", only], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    P, Q = get_profile("gpu-quick-tiny"), get_profile("gpu-quick")
    assert P.stages == Q.stages and Q.model.dtype == "bfloat16"      # same stages as the GPU run; only sizes and dtype differ
    stages = sorted(p.name for p in (ROOT / "nbs").glob("[0-9][0-9]_*.ipynb") if re.search(P.stages, p.name))
    assert "10_probing.ipynb" in stages and "11_meta_neurons.ipynb" not in stages
    ran = sorted(p.name for p in (tmp_path / "runs" / "gpu-quick-tiny").glob("*.ipynb"))
    assert ran == [n for n in stages if re.search(only, n)] == ["03_harvest.ipynb", "05_train.ipynb", "16_stream.ipynb"]
    s = json.loads((tmp_path / "runs" / "gpu-quick-tiny" / "figures" / "gpu_quick.json").read_text())
    assert s["harvest_tok_s"] > 0 and s["train_act_s"] > 0 and 0 < s["mfu_vs_measured"] < 2 and s["profile"] == "gpu-quick-tiny"
