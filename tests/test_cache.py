"""The one cache: keys follow spec and code version, entries are computed once, writes are atomic."""
import json
import os

import pytest

from mdlcap import cache


@pytest.fixture(autouse=True)
def _root(tmp_path, monkeypatch):
    monkeypatch.setenv("MDLCAP_CACHE", str(tmp_path / "c"))


def test_cached_computes_once_and_reads_back():
    calls = []
    def compute():
        calls.append(1)
        return {"x": [1.0, 2.0]}
    assert cache.cached("scores", {"a": 1}, compute) == {"x": [1.0, 2.0]}
    assert cache.cached("scores", {"a": 1}, compute) == {"x": [1.0, 2.0]}
    assert len(calls) == 1
    cache.cached("scores", {"a": 2}, compute)
    assert len(calls) == 2


def test_key_follows_code_version(monkeypatch):
    k0 = cache.key("scores", {"a": 1})
    monkeypatch.setitem(cache.CODE_VERSIONS, "scores", "999")
    assert cache.key("scores", {"a": 1}) != k0
    assert cache.key("finetune", {"a": 1}) != k0


def test_bad_arguments_name_the_rule():
    with pytest.raises(ValueError, match="namespace"):
        cache.key("nope", {})
    with pytest.raises(ValueError, match="spec"):
        cache.key("scores", [1, 2])
    with pytest.raises(ValueError, match="load, dump"):
        cache.cached("scores", {}, dict, load=json.load)


def test_failed_compute_leaves_no_entry():
    def boom():
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        cache.cached("scores", {"a": 3}, boom)
    assert not cache.path("scores", {"a": 3}).exists()


def test_custom_format_is_renamed_into_place():
    def dump(p, v):
        p.write_text(v)
    out = cache.cached("precision", {"m": 1}, lambda: "weights", load=lambda p: p.read_text(), dump=dump,
                       suffix=".txt")
    assert out == "weights"
    p = cache.path("precision", {"m": 1}, ".txt")
    assert p.read_text() == "weights"
    assert not [f for f in os.listdir(p.parent) if f.endswith(".tmp")]


def test_cached_dir_builds_once_and_cleans_interrupted_builds():
    built = []
    def build(tmp):
        built.append(tmp)
        (tmp / "model.txt").write_text("ok")
    d = cache.cached_dir("models", {"m": 1}, build)
    assert (d / "model.txt").read_text() == "ok"
    assert cache.cached_dir("models", {"m": 1}, build) == d
    assert len(built) == 1

    def crash(tmp):
        (tmp / "half").write_text("x")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        cache.cached_dir("models", {"m": 2}, crash)
    assert not list(cache.folder("models").glob(".tmp-*"))
    assert not (cache.folder("models") / cache.key("models", {"m": 2})).exists()
