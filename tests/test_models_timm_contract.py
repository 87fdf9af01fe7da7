"""The timm model contract, for every family: scripting, unpooled output, forward_intermediates, pruning,
features_only with the getter wrapper, and explicit registration."""

import inspect

import pytest
import timm
import torch
from timm.models import create_feature_extractor, get_graph_node_names, model_entrypoint
from timm.models._features import FeatureGetterNet
from timm.models.convnext import ConvNeXt

import videomac  # noqa: F401  (registers the models)

# one small model per family, at an input its stride divides (the isotropic model's stride is 16)
FAMILIES = {"videomac_rn18": 64, "videomac_cnxv2_atto": 64, "videomac_cnxv1_t": 64, "videomac_cnxv2_iso_s": 32}
NAMES = sorted(FAMILIES)

# timm.list_models('videomac_*') before the models were registered one function each: it must not change
REGISTERED = [
    "videomac_cnxv1_s",
    "videomac_cnxv1_t",
    "videomac_cnxv2_atto",
    "videomac_cnxv2_b",
    "videomac_cnxv2_femto",
    "videomac_cnxv2_h",
    "videomac_cnxv2_iso_b",
    "videomac_cnxv2_iso_s",
    "videomac_cnxv2_l",
    "videomac_cnxv2_nano",
    "videomac_cnxv2_pico",
    "videomac_cnxv2_s",
    "videomac_cnxv2_t",
    "videomac_rn18",
    "videomac_rn34",
    "videomac_rn50",
    "videomac_rn101",
]


def make(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


def inputs(name, batch=2):
    torch.manual_seed(1)
    size = FAMILIES[name]
    return torch.randn(batch, 3, size, size)


def test_every_model_is_a_named_function_in_its_module():
    assert timm.list_models("videomac_*") == REGISTERED
    for name in REGISTERED:
        fn = model_entrypoint(name)
        module = inspect.getmodule(fn)
        # found by grep: `def videomac_...(` in the module's source, not generated in a loop
        assert fn.__name__ == name and getattr(module, name) is fn
        assert f"def {name}(pretrained: bool = False, **kwargs)" in inspect.getsource(module)


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_equals_eager(name):
    model, x = make(name), inputs(name)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scripted.forward_features(x), model.forward_features(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_equals_eager_and_scripts(name):
    model, x = make(name), inputs(name)
    _, eval_nodes = get_graph_node_names(model)
    graph = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])  # timm's tracer: timm's leaf modules
    with torch.no_grad():
        want = model(x)
        (traced,) = graph(x).values()
        assert torch.equal(traced, want)
        # the traced code carries forward's annotations, which TorchScript must be able to resolve
        (scripted,) = torch.jit.script(graph)(x).values()
        torch.testing.assert_close(scripted, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_global_pool_empty_returns_the_unpooled_map(name):
    x = inputs(name)
    model = make(name)
    with torch.no_grad():
        fmap = model.forward_features(x)
        pooled = model.forward_head(fmap, pre_logits=True)
        assert fmap.ndim == 4 and fmap.shape[1] == model.num_features and pooled.shape == (2, model.num_features)
        # timm's ConvNeXt head keeps its LayerNorm (head.norm) when it does not pool: per position, as timm's
        expect = model.head.norm(fmap) if isinstance(model, ConvNeXt) else fmap
        unpooled = make(name, num_classes=0, global_pool="")
        torch.testing.assert_close(unpooled(x), expect)
        model.reset_classifier(0, "")
        torch.testing.assert_close(model(x), expect)
        model.reset_classifier(0, "avg")
        torch.testing.assert_close(model(x), pooled)
        model.reset_classifier(3, "avg")
        assert model(x).shape == (2, 3)


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates(name):
    model, x = make(name), inputs(name, batch=1)
    info = model.feature_info
    n = len(info)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(inter) == n
        for t, f in zip(inter, info):
            assert t.shape == (1, f["num_chs"], x.shape[2] // f["reduction"], x.shape[3] // f["reduction"])
        # indices: an int takes the last n, a list takes those (negative from the end)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert isinstance(last2, list) and len(last2) == 2
        for a, b in zip(last2, inter[-2:]):
            torch.testing.assert_close(a, b)
        picked = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        torch.testing.assert_close(picked[0], inter[0])
        torch.testing.assert_close(picked[1], inter[-1])
        # stop_early: the final output is where the last taken index stopped
        early, early_inter = model.forward_intermediates(x, indices=[1], stop_early=True)
        torch.testing.assert_close(early_inter[0], inter[1])
        torch.testing.assert_close(early, inter[1] if name != "videomac_cnxv2_iso_s" else model.norm(inter[1]))
        # norm: the final norm on the intermediates; only the isotropic model has one outside its stages
        normed = model.forward_intermediates(x, indices=[0, -1], norm=True, intermediates_only=True)
        if name == "videomac_cnxv2_iso_s":
            torch.testing.assert_close(normed[1], final)
            torch.testing.assert_close(normed[0], model.norm(inter[0]))
        else:
            torch.testing.assert_close(normed[0], inter[0])
            torch.testing.assert_close(normed[1], inter[-1])


@pytest.mark.parametrize("name", NAMES)
def test_prune_intermediate_layers(name):
    model, x = make(name), inputs(name, batch=1)
    with torch.no_grad():
        _, inter = model.forward_intermediates(x)
        n_params = sum(p.numel() for p in model.parameters())
        kept = model.prune_intermediate_layers([0, 1])
        assert kept == [0, 1]
        assert sum(p.numel() for p in model.parameters()) < n_params
        again = model.forward_intermediates(x, indices=kept, intermediates_only=True)
        torch.testing.assert_close(again[0], inter[0])
        torch.testing.assert_close(again[1], inter[1])
        # the head is gone and the features end at index 1, so forward() is that unpooled map
        assert model.num_classes == 0 and model.num_features == model.feature_info[1]["num_chs"]
        out = model(x)
        torch.testing.assert_close(out, inter[1] if name != "videomac_cnxv2_iso_s" else model.norm(inter[1]))
        torch.testing.assert_close(torch.jit.script(model)(x), out)


@pytest.mark.parametrize("name", NAMES)
def test_features_only_getter(name):
    x = inputs(name, batch=1)
    n = len(make(name).feature_info)
    out_indices = (0, 1) if n == 4 else (0, 5)
    feats = make(name, features_only=True, feature_cls="getter", out_indices=out_indices)
    assert isinstance(feats, FeatureGetterNet)
    full = make(name)
    missing, unexpected = full.load_state_dict(
        {k.removeprefix("model."): v for k, v in feats.state_dict().items()}, strict=False
    )
    assert not unexpected and missing  # the getter dropped the layers after the last index
    with torch.no_grad():
        got = feats(x)
        want = full.forward_intermediates(x, indices=list(out_indices), intermediates_only=True)
    assert len(got) == len(out_indices)
    assert [t.shape[1] for t in got] == feats.feature_info.channels()
    assert [x.shape[-1] // t.shape[-1] for t in got] == feats.feature_info.reduction()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("getter", [False, True], ids=["features_only", "getter"])
@pytest.mark.parametrize("name", NAMES)
def test_features_only_scripts_equals_eager(name, getter):
    """torch.jit.script of a features_only model (timm's default wrapper, and the forward_intermediates
    getter for every family) runs and gives the eager features bit for bit."""
    x = inputs(name, batch=1)
    if getter:
        n = len(make(name).feature_info)
        feats = FeatureGetterNet(make(name), out_indices=(0, 1) if n == 4 else (2, 5))
    else:
        feats = make(name, features_only=True)
    scripted = torch.jit.script(feats)
    with torch.no_grad():
        want, got = feats(x), scripted(x)
    assert len(got) == len(want) >= 2
    for a, b in zip(got, want):
        assert torch.equal(a, b)
