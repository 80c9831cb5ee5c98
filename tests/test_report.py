"""The browsable report: built from a small fake run folder, then opened in headless Chromium (glp_nb.report)."""
import base64, io, json, re
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nbformat, numpy as np, pytest
from nbformat.v4 import new_notebook, new_markdown_cell, new_code_cell, new_output
from glp_nb.core import fig_dir, run_dir
from glp_nb.report import report, build_report, check_report, screenshot, png_size

META = dict(profile="cpu", model="gemma3-270m", layer=8, git="abc1234", time="2026-01-01T00:00:00")

def _png(path: Path, w=1, h=1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, np.full((h, w, 3), 0.5)); return path

def _executed(path: Path, text: str) -> Path:
    buf = io.BytesIO(); plt.imsave(buf, np.zeros((2, 2, 3)), format="png")
    nb = new_notebook(cells=[new_markdown_cell(f"# {path.stem}"), new_code_cell("print(1)", execution_count=1, outputs=[
        new_output("stream", name="stdout", text=text + "\n"),
        new_output("display_data", data={"image/png": base64.b64encode(buf.getvalue()).decode(), "text/plain": "<Figure>"})])])
    nb.metadata["papermill"] = dict(exception=None, end_time="2026-01-01T00:01:00", parameters=dict(profile_name="cpu"))
    nbformat.write(nb, path); return path

@pytest.fixture
def cpu_run(tmp_path, monkeypatch):
    "A fake cpu run under GLP_NB_OUT=tmp_path: 2 executed notebooks, timings, 2 figures with JSON (one gives a results table)."
    monkeypatch.setenv("GLP_NB_OUT", str(tmp_path))
    rd, figs = run_dir("cpu"), fig_dir("cpu")
    _executed(rd / "00_core.ipynb", "core done"); _executed(rd / "01_models.ipynb", "models done")
    (rd / "timings.json").write_text(json.dumps(dict(profile="cpu", git="abc1234", total=90.0,
                                                     seconds={"00_core.ipynb": 30.0, "01_models.ipynb": 60.0})))
    _png(figs / "probing_auc.png", 3, 2)
    (figs / "probing_auc.json").write_text(json.dumps(dict(meta=META,
        summary=[dict(method="glp", mean_auc=0.7, ci_low=0.6, ci_high=0.8)], per_dataset=[dict(dataset="a")],
        paper=dict(llama1b=dict(glp=0.84)))))
    _png(figs / "scaling curve.png")                       # a space in the name: the link must be URL-quoted
    (figs / "scaling curve.json").write_text(json.dumps(dict(meta=META, points=[1, 2])))
    return tmp_path, rd, figs

def test_report_opens_in_chromium(cpu_run):
    out, rd, figs = cpu_run
    page = report("cpu", screenshot_to=figs / "report_preview.png")   # what glp-reproduce does after the cpu chain
    assert page == out / "runs" / "cpu" / "report.html"
    assert sorted(p.name for p in (rd / "html").glob("*.html")) == ["00_core.html", "01_models.html"]
    r = check_report(page)
    assert r["loaded"] and r["title"] == "glp-nb report: cpu"
    assert [s for s, _ in r["images"]] == ["../../figures/probing_auc.png", "../../figures/scaling%20curve.png"]
    assert r["broken"] == [] and all(ok for _, ok in r["images"])
    assert r["results_table"] and r["results_rows"] >= 1        # the probing row (stage times are in the stages table)
    text = page.read_text()
    assert "0.700 [0.600, 0.800]" in text and 'href="html/01_models.html"' in text and "report_preview" not in text
    # each rendered notebook opens too, with its inlined output figure
    nb = check_report(rd / "html" / "01_models.html")
    assert nb["loaded"] and len(nb["images"]) == 1 and nb["broken"] == []
    assert png_size(figs / "report_preview.png") == (1280, 1600)

def test_broken_image_is_reported(cpu_run):
    out, rd, figs = cpu_run
    page = build_report("cpu")
    (figs / "scaling curve.png").unlink()                     # the page now points at a missing file
    (figs / "probing_auc.png").write_bytes(b"\x89PNG not really")  # and at a corrupt one
    r = check_report(page)
    assert r["broken"] == ["../../figures/probing_auc.png", "../../figures/scaling%20curve.png"]
    assert r["results_table"]

def test_no_results_table_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("GLP_NB_OUT", str(tmp_path))
    _executed(run_dir("smoke") / "00_core.ipynb", "x")          # no timings, no figure JSON: no table to show
    r = check_report(build_report("smoke"))
    assert not r["results_table"] and r["images"] == [] and r["loaded"]

def test_no_executed_notebooks_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GLP_NB_OUT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "runs" / "gpu"))): report("gpu")

def test_screenshot_png_width(cpu_run):
    out, rd, figs = cpu_run
    page = build_report("cpu")
    png = screenshot(page, out / "shots" / "p.png", width=900, height=700)
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(head[16:20], "big") == 900 and int.from_bytes(head[20:24], "big") == 700
    assert not list((out / "shots").glob(".*.tmp"))            # atomic write left no temp file
