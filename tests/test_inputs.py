"""Unclear or silent inputs (issue 11, item 6): each one is now an error (or, where harmless, a warning) that names the
file, key or value at fault, raised before any heavy work. One test per case; tiny fakes only, no real model."""
import re
from pathlib import Path
import pytest
import torch

from glp_nb.core import CorpusCfg, GLPCfg, ModelCfg
from glp_nb.corpus import docs
from glp_nb.glp import make_glp, save_authors_layout, load_authors_glp
from glp_nb import models
from glp_nb.models import tiny_llm, encode, load_llm
from glp_nb.steer import generate

GREEK = "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο. " * 10
JAPANESE = "速い茶色の狐がのろまな犬を飛び越えます。" * 20


def _docs(src, **kw): return list(docs(CorpusCfg(source=str(src), min_chars=20, val_frac=0.5, **kw), "train")) + \
                             list(docs(CorpusCfg(source=str(src), min_chars=20, val_frac=0.5, **kw), "val"))


# ---------------------------------------------------------------- 1. local corpus encodings
def test_cp1253_file_is_an_error_naming_it(tmp_path):
    f = tmp_path / "greek.txt"; f.write_bytes(GREEK.encode("cp1253"))
    with pytest.raises(ValueError, match=r"greek\.txt is not UTF-8 text: undecodable byte .* on line 1 .*Re-encode it to UTF-8"):
        docs(CorpusCfg(source=str(f)))


def test_shift_jis_file_in_a_folder_is_named(tmp_path):
    (tmp_path / "a_ok.txt").write_text(GREEK, encoding="utf-8")
    (tmp_path / "b_sjis.txt").write_bytes(JAPANESE.encode("shift_jis"))
    with pytest.raises(ValueError, match=r"b_sjis\.txt is not UTF-8 text.*iconv"):
        docs(CorpusCfg(source=str(tmp_path)))


def test_utf16_and_utf8_with_bom_are_read(tmp_path):
    for enc in ("utf-16", "utf-8-sig"):
        f = tmp_path / f"{enc}.txt"; f.write_bytes(GREEK.strip().encode(enc))
        got = _docs(f)
        assert got and all(t in GREEK and "\ufeff" not in t for _, t in got), (enc, got[:1])


def test_utf16_without_bom_is_an_error(tmp_path):
    f = tmp_path / "u16.txt"; f.write_bytes(("Plain English text. " * 20).encode("utf-16-le"))
    with pytest.raises(ValueError, match=r"u16\.txt holds NUL characters: probably UTF-16 without a byte-order mark"):
        docs(CorpusCfg(source=str(f)))


# ---------------------------------------------------------------- 2. null text in .jsonl (and .parquet)
def test_jsonl_null_text_names_file_line_and_key(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"text": "' + "Some words. " * 30 + '"}\n{"id": 7, "text": null}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"rows\.jsonl: line 2: 'text' is null, not a string"):
        docs(CorpusCfg(source=str(f)))


def test_parquet_null_text_names_file_and_row(tmp_path):
    pd = pytest.importorskip("pandas"); pytest.importorskip("pyarrow")
    f = tmp_path / "rows.parquet"
    pd.DataFrame({"text": ["Some words. " * 30, None, "More words. " * 30]}).to_parquet(f)
    with pytest.raises(ValueError, match=r"rows\.parquet: 1 rows of column 'text' are not strings \(first: row 1, null\)"):
        docs(CorpusCfg(source=str(f)))


# ---------------------------------------------------------------- 3. GLP.project
@pytest.fixture(scope="module")
def glp(): return make_glp(4, GLPCfg(depth=1, d_model=8, d_mlp=8), torch.zeros(4), torch.ones(4))


def test_project_nonfinite_rows_counted_and_located(glp):
    x = torch.randn(6, 4); x[2, 1] = float("nan"); x[4, 3] = float("inf")
    with pytest.raises(ValueError, match=r"2 of 6 rows hold NaN or inf \(first at index 2\)"):
        glp.project(x)


def test_project_refuses_integer_input(glp):
    with pytest.raises(TypeError, match=r"must be a float tensor, got dtype torch\.int64"):
        glp.project(torch.ones(3, 4, dtype=torch.int64))


def test_project_keeps_the_float_dtype(glp):
    for dt in (torch.float64, torch.float32, torch.bfloat16):
        assert glp.project(torch.randn(3, 4).to(dt), steps=2).dtype == dt


# ---------------------------------------------------------------- 4. generate with a NaN steering delta
def test_generate_refuses_nonfinite_delta():
    m = tiny_llm("llama", layers=2, d=32)
    seqs = encode(m, ["one", "two"])
    delta = torch.zeros(2, m.d); delta[1, 5] = float("nan")
    with pytest.raises(ValueError, match=r"steering delta: 1 of 2 rows hold NaN or inf \(first: row 1\)"):
        generate(m, seqs, 3, delta=delta)


# ---------------------------------------------------------------- 5. load_llm: layer type, dtype, both before loading
@pytest.fixture
def no_loading(monkeypatch):
    "Fail the test if load_llm gets as far as resolving (converting, downloading) a model."
    def boom(name): raise AssertionError(f"load_llm resolved {name!r} before validating its config")
    monkeypatch.setattr(models, "_resolve", boom)


@pytest.mark.parametrize("layer", [8.0, True, "8"])
def test_load_llm_layer_must_be_an_integer(no_loading, layer):
    with pytest.raises(TypeError, match=rf"layer must be an integer block index .* got {re.escape(repr(layer))}"):
        load_llm(ModelCfg(layer=layer))


def test_load_llm_unknown_dtype_before_conversion(no_loading):
    with pytest.raises(ValueError, match=r"ModelCfg\.dtype 'float8' is not supported; use one of \('float32', 'bfloat16', 'float16'\)"):
        load_llm(ModelCfg(dtype="float8"))


# ---------------------------------------------------------------- 6. load_authors_glp: folders, hub ids, config keys
@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)      # relative names resolve here, where nothing exists


@pytest.mark.parametrize("name", ["./ld/nope", "ld/nope/deeper", "nope", "~/no/such/glp"])
def test_missing_path_is_no_such_folder(offline_hub, name):
    with pytest.raises(FileNotFoundError, match=rf"no such folder: {re.escape(repr(name))}.*a hub id must be 'owner/name'"):
        load_authors_glp(name)


def test_missing_path_object_is_a_folder_not_a_hub_id(offline_hub):
    with pytest.raises(FileNotFoundError, match=r"no such folder: 'ld/nope'"):
        load_authors_glp(Path("ld/nope"))


def test_owner_name_offline_says_neither_folder_nor_hub(offline_hub):
    with pytest.raises(FileNotFoundError, match=r"'ld/nope': no such folder .*as a hub id the Hugging Face hub is unreachable"):
        load_authors_glp("ld/nope")


@pytest.fixture
def authors_folder(tmp_path):
    g = make_glp(4, GLPCfg(depth=1, d_model=8, d_mlp=8), torch.zeros(4), torch.ones(4))
    return save_authors_layout(g, tmp_path / "glp")


def test_unknown_denoiser_key_is_refused(authors_folder):
    c = authors_folder / "config.yaml"
    c.write_text(c.read_text().replace("    d_mlp: 8\n", "    d_mlp: 8\n    activation: gelu\n"))
    assert "activation: gelu" in c.read_text()
    with pytest.raises(ValueError, match=r"config\.yaml: unknown key\(s\) \['activation'\] in glp_kwargs\.denoiser_config"):
        load_authors_glp(authors_folder)


def test_unknown_top_level_key_warns(authors_folder):
    c = authors_folder / "config.yaml"
    c.write_text(c.read_text() + "activation: gelu\nlearning_rate: 5.0e-05\n")
    with pytest.warns(UserWarning, match=r"config\.yaml: top-level key\(s\) \['activation'\] are not in the authors' training config"):
        g = load_authors_glp(authors_folder)
    assert g.d == 4
