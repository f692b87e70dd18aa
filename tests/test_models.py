"""Models: every registered model's forward shape, the registry's errors, baselines' architecture and init."""
from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from archrelax.models import build_architecture, check_model_kwargs, create_model, list_models, register_model

CNNS = ["vanilla_cnn", "alexnet"]


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_every_registered_model_forward_shape(name, shape):
    if name in ("fcn", "lcn") and shape == (3, 32, 32):
        kw = {"base": "vanilla_cnn", "width": 8}  # the relaxed baselines are big: keep them narrow
    elif name in ("fcn", "lcn"):
        kw = {"base": "alexnet", "width": 4}
    else:
        kw = {}
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=shape[0], input_size=shape[1], **kw)
    assert model.input_shape == shape
    out = model.eval()(torch.randn(3, *shape))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_vanilla_cnn_layers_match_the_seed():
    m = create_model("vanilla_cnn", width=16)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.padding, c.out_channels) for c in convs] == [
        ((4, 4), (2, 2), (2, 2), 16), ((5, 5), (1, 1), (2, 2), 16), ((3, 3), (1, 1), (1, 1), 16)]
    assert all(c.bias is not None for c in convs)
    pools = [x for x in m.modules() if isinstance(x, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(3, 2)] * 3
    assert not any(isinstance(x, nn.Dropout) for x in m.modules())
    # 32 -> 17 -> 8 -> 8 -> 3 -> 3 -> 1: the classifier sees `width` features
    assert m.classifier[0].in_features == 16 and m.input_shape == (3, 32, 32)
    assert create_model("vanilla_cnn", input_size=64).classifier[0].in_features == 64 * 3 * 3


def test_alexnet_layers_match_the_seed():
    m = create_model("alexnet")
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 192, 384, 256, 256]
    linears = [(x.in_features, x.out_features) for x in m.modules() if isinstance(x, nn.Linear)]
    assert linears == [(256, 512), (512, 512), (512, 10)]
    kinds = [type(x).__name__ for x in m.classifier]
    assert kinds == ["Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear"]


@pytest.mark.parametrize("name", CNNS)
def test_too_small_input_names_size_and_smallest_valid(name):
    create_model(name, input_size=28)  # smallest valid for both
    with pytest.raises(ValueError, match=r"input size 27x27.*smallest valid input size is 28"):
        create_model(name, input_size=27)
    with pytest.raises(ValueError, match=r"input size 32x20"):
        create_model(name, input_size=(32, 20))


def test_unknown_name_lists_registered_models():
    with pytest.raises(ValueError, match=r"unknown model 'resnet9'.*alexnet.*vanilla_cnn"):
        create_model("resnet9")


def test_factory_path_errors_are_clear():
    with pytest.raises(ValueError, match=r"cannot import module 'no_such_pkg_xyz.models'"):
        create_model("no_such_pkg_xyz.models:net")
    with pytest.raises(ValueError, match=r"has no callable 'nothing_here'"):
        create_model("archrelax.models.vanilla:nothing_here")


def test_user_factory_by_path_and_by_decorator(tmp_path, monkeypatch):
    (tmp_path / "my_models_pkg.py").write_text(textwrap.dedent("""
        from torch import nn
        def tiny(*, num_classes=10, in_channels=3, input_size=32):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size ** 2, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    m = create_model("my_models_pkg:tiny", num_classes=4, input_size=8)
    assert m.input_shape == (3, 8, 8)  # filled in from the factory's arguments
    assert m(torch.zeros(2, 3, 8, 8)).shape == (2, 4)
    sys.modules.pop("my_models_pkg", None)

    @register_model("test_tiny_decorated")
    def tiny2(*, num_classes=10, in_channels=3, input_size=32):
        m = nn.Linear(in_channels * input_size**2, num_classes)
        m.input_shape = (in_channels, input_size, input_size)
        return m

    assert "test_tiny_decorated" in list_models()
    assert create_model("test_tiny_decorated", input_size=4).in_features == 48
    with pytest.raises(ValueError, match="already registered"):
        register_model("test_tiny_decorated")(lambda **kw: None)
    with pytest.raises(ValueError, match="without ':'"):
        register_model("a:b")


def test_model_kwargs_typo_names_the_key_and_the_factory_parameters_without_building(tmp_path, monkeypatch):
    with pytest.raises(ValueError) as e:
        create_model("vanilla_cnn", widht=32)
    assert str(e.value) == ("model 'vanilla_cnn' has no option 'widht'; did you mean 'width'? "
                            "(vanilla_cnn takes: width, num_classes, in_channels, input_size)")
    # fcn/lcn forward **base_kw to their base model: its parameters are listed too
    with pytest.raises(ValueError, match=r"model 'lcn' has no option 'widht'; did you mean 'width'\? \(lcn takes: "
                                         r"base, layers; its base 'alexnet' takes: width, .*dropout\)"):
        create_model("lcn", base="alexnet", widht=4)
    with pytest.raises(ValueError, match=r"model 'fcn': base 'vanila_cnn' is not a model \(unknown model"):
        create_model("fcn", base="vanila_cnn")
    # user factories by path: checked from the signature, never called
    (tmp_path / "kw_models_pkg.py").write_text(textwrap.dedent("""
        from torch import nn
        CALLS = []
        def tiny(*, hidden: int = 4, num_classes: int = 10, in_channels: int = 3, input_size: int = 8):
            CALLS.append(hidden)
            return nn.Linear(in_channels * input_size * input_size, num_classes)
        def needs(*, hidden, num_classes=10, in_channels=3, input_size=8):
            return nn.Linear(1, 1)
        def no_data(*, hidden=4):
            return nn.Linear(1, 1)
        def anything(**kw):
            return nn.Linear(1, 1)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"model 'kw_models_pkg:tiny' has no option 'hiden'; did you mean 'hidden'"):
        create_model("kw_models_pkg:tiny", hiden=3)
    import kw_models_pkg

    assert kw_models_pkg.CALLS == []  # nothing was built
    with pytest.raises(ValueError, match=r"model 'kw_models_pkg:needs' needs option\(s\) 'hidden'"):
        create_model("kw_models_pkg:needs")
    # what the trainer adds from the data must be taken too (checked before any run starts)
    with pytest.raises(ValueError, match=r"has no option 'num_classes', 'in_channels', 'input_size'.*the trainer "
                                         r"passes num_classes, in_channels, input_size from the data"):
        check_model_kwargs("kw_models_pkg:no_data", {"hidden": 2}, data_keys=True)
    check_model_kwargs("kw_models_pkg:anything", {"whatever": 1}, data_keys=True)  # **kwargs takes anything
    check_model_kwargs("fcn", {"base": "alexnet", "width": 4, "layers": ["features.0"]}, data_keys=True)


def test_build_architecture_plain_cnn_and_errors():
    m = build_architecture({"model": "vanilla_cnn", "model_kwargs": {"width": 8}, "relax_chain": [], "relax_layers": None})
    assert m.classifier[0].in_features == 8
    with pytest.raises(ValueError, match=r"unknown keys \['modle'\]"):
        build_architecture({"model": "vanilla_cnn", "modle": 1})
    with pytest.raises(ValueError, match="'model' key"):
        build_architecture({"model_kwargs": {}})


# ---------------------------------------------------------------- needs archrelax.embed (relax)

relax_mod = pytest.importorskip("archrelax.embed.relax", reason="archrelax.embed.relax not available yet")


def _relaxed_layers(model):
    from archrelax.embed import RelaxedConv

    return {n: m for n, m in model.named_modules() if isinstance(m, RelaxedConv)}


def test_build_architecture_relax_chain_matches_relax():
    arch = {"model": "vanilla_cnn", "model_kwargs": {"width": 4}, "relax_chain": ["lc", "fc"], "relax_layers": None}
    m = build_architecture(arch)
    torch.manual_seed(0)
    ref = relax_mod.relax(create_model("vanilla_cnn", width=4), to="fc", example_input=torch.zeros(1, 3, 32, 32))
    assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert set(_relaxed_layers(m)) == {"features.0", "features.3", "features.6"}


@pytest.mark.parametrize("to", ["fc", "lc"])
def test_baseline_is_relaxed_architecture_with_fresh_standard_init(to):
    name = to + "n"
    torch.manual_seed(0)
    cnn = create_model("vanilla_cnn", width=8)
    embedded = relax_mod.relax(cnn, to=to, example_input=torch.zeros(1, 3, 32, 32))
    torch.manual_seed(0)  # same seed: without the re-initialisation the weights would be the embedded CNN's
    base = create_model(name, base="vanilla_cnn", width=8)
    assert base.input_shape == (3, 32, 32)
    sd_b, sd_e = base.state_dict(), embedded.state_dict()
    assert {k: v.shape for k, v in sd_b.items()} == {k: v.shape for k, v in sd_e.items()}
    layers = _relaxed_layers(base)
    assert set(layers) == {"features.0", "features.3", "features.6"}
    convs = dict(cnn.named_modules())
    for path, layer in layers.items():
        w = layer.weight.detach()
        assert not torch.equal(w, sd_e[path + ".weight"])
        # not a CNN in disguise: the weights are far from the CNN subspace (re-embedding the projection)
        proj = layer.embed_weight(layer.project()[0])
        assert (w - proj).norm() > 0.5 * w.norm()
        # standard scale: PyTorch's conv init has bound 1/sqrt(fan_in), like the relaxed layers' fresh init
        if to == "lc":
            ratio = float(w[layer.local_mask()].std() / convs[path].weight.detach().std())
            assert 0.75 < ratio < 1.33
        else:
            fan_in = w.shape[-1]
            assert float(w.abs().max()) <= fan_in**-0.5 + 1e-6
            assert abs(float(w.std()) * (3 * fan_in) ** 0.5 - 1) < 0.05


def test_baseline_rejects_baseline_base():
    with pytest.raises(ValueError, match="itself a baseline"):
        create_model("fcn", base="lcn")
