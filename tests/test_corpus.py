"Tests of glp_nb.corpus: the deterministic document-level split, local sources, errors, and the offline mix."
import json, pytest
from pathlib import Path
from glp_nb.core import CorpusCfg
from glp_nb.corpus import docs, corpus_info, passages, split_of, OFFLINE

def parent(doc_id): return doc_id.split("#")[0]

@pytest.fixture(scope="module")
def offline():
    cfg = CorpusCfg()
    return cfg, list(docs(cfg, "train")), list(docs(cfg, "val"))

def test_offline_split_deterministic_and_disjoint(offline):
    cfg, tr, va = offline
    assert tr == list(docs(cfg, "train")) and va == list(docs(cfg, "val"))
    assert len(tr) > 1000 and len(va) > 50
    assert not {parent(d) for d, _ in tr} & {parent(d) for d, _ in va}
    assert len({d for d, _ in tr}) == len(tr)
    # the split of a document depends on its id and the seed only
    assert all(split_of(parent(d), cfg) == "val" for d, _ in va)
    tr2 = list(docs(CorpusCfg(seed=7), "train"))
    assert {d for d, _ in tr2} != {d for d, _ in tr}

def test_offline_mix_has_every_source(offline):
    cfg, tr, va = offline
    assert {d.split("/")[0] for d, _ in tr} == set(OFFLINE)
    assert {d.split("/")[0] for d, _ in tr[:100]} == set(OFFLINE)  # interleaved: a short prefix already mixes them
    assert all(cfg.min_chars <= len(t) <= cfg.max_chars for _, t in tr)
    assert not any("movie" in d or "sst" in d for d, _ in tr)
    info = corpus_info(cfg)
    assert set(info["sources"]) == set(OFFLINE)
    assert sum(c["chars_train"] for c in info["sources"].values()) > 15_000_000
    assert all(c["license"] for c in info["sources"].values())

def test_local_folder(tmp_path):
    for i in range(25):
        (tmp_path / "sub" if i % 2 else tmp_path).mkdir(exist_ok=True)
        f = (tmp_path / "sub" if i % 2 else tmp_path) / f"doc{i}.txt"
        f.write_text("\n\n".join(f"Document {i}, paragraph {j}, with enough words in it to count. " * 3 for j in range(5)))
    cfg = CorpusCfg(source=str(tmp_path), max_chars=400, min_chars=100, val_frac=0.2)
    tr, va = list(docs(cfg, "train")), list(docs(cfg, "val"))
    assert tr == list(docs(cfg, "train"))
    assert tr and va and not {parent(d) for d, _ in tr} & {parent(d) for d, _ in va}
    assert len({parent(d) for d, _ in tr + va}) == 25
    assert corpus_info(cfg)["sources"]["local"]["docs"] == 25

def test_local_files(tmp_path):
    text = "A sentence of some length that repeats. " * 20
    j = tmp_path / "d.jsonl"
    j.write_text("\n".join(json.dumps({"id": f"x{i}", "text": f"{i} " + text}) for i in range(20)))
    got = list(docs(CorpusCfg(source=str(j), val_frac=0.5), "train")) + list(docs(CorpusCfg(source=str(j), val_frac=0.5), "val"))
    assert sorted(parent(d) for d, _ in got) == sorted(f"d.jsonl/x{i}" for i in range(20))
    t = tmp_path / "book.txt"; t.write_text("\n\n".join(f"Part {i}. " + text for i in range(200)))
    cfg = CorpusCfg(source=str(t), max_chars=2000, val_frac=0.1)
    tr, va = list(docs(cfg, "train")), list(docs(cfg, "val"))
    assert tr and va and not {d for d, _ in tr} & {d for d, _ in va}

def test_unknown_source():
    with pytest.raises(ValueError, match=r"unknown corpus source 'offlne'.*'offline'.*'fineweb'"):
        docs(CorpusCfg(source="offlne"))
    with pytest.raises(ValueError, match="split must be"):
        docs(CorpusCfg(), "validation")

def test_passages_cut_at_breaks():
    t = "\n\n".join(x.strip() for x in ["Para one is here. " * 5, "Para two is here. " * 5, "Para three. " * 5])
    ps = passages(t, max_chars=200, min_chars=10)
    assert all(len(p) <= 200 for p in ps) and "\n\n".join(ps) == t
