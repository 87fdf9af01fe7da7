"""The docs cannot rot: generated pages match their generators, links resolve, figures stay small."""

import importlib.util
import os
import re

import pytest

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def load(script):
    spec = importlib.util.spec_from_file_location(script[:-3], os.path.join(DOCS, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_zoo_page_is_generated_from_the_registry(monkeypatch):
    monkeypatch.delenv("VIDEOMAC_WEIGHTS_REGISTRY", raising=False)
    zoo = load("make_model_zoo.py")
    with open(os.path.join(DOCS, "model_zoo.md")) as f:
        committed = f.read()
    assert committed == zoo.render(), "docs/model_zoo.md is stale: run python docs/make_model_zoo.py"
    from videomac.registry import load_registry

    for e in load_registry():
        assert f"`{e.name}`" in committed


@pytest.mark.parametrize("page", sorted(f for f in os.listdir(DOCS) if f.endswith(".md")))
def test_relative_links_resolve(page):
    with open(os.path.join(DOCS, page)) as f:
        text = f.read()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [u for u in links if "://" not in u and not os.path.exists(os.path.join(DOCS, u))]
    assert not missing, f"{page} links to missing files: {missing}"


def test_figures_are_small():
    imgs = [f for f in os.listdir(os.path.join(DOCS, "img")) if f.endswith(".png")]
    assert {"masking.png", "reconstruction.png"} <= set(imgs)
    for f in imgs:
        assert os.path.getsize(os.path.join(DOCS, "img", f)) < 300 * 1024, f


def test_api_page_covers_its_modules():
    api = load("make_api.py")
    with open(os.path.join(DOCS, "api.md")) as f:
        committed = f.read()
    for mod, _ in api.MODULES:
        assert f"## {mod}\n" in committed, f"{mod} missing: run python docs/make_api.py"
