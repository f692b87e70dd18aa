"""footprint(): counts from ConvGeometry agree with the real relaxed layers; the AlexNet numbers; the CLI."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from archrelax.cli import main as cli_main
from archrelax.embed import footprint, relax


def small_cnn(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
        nn.Conv2d(4, 6, (3, 2), stride=2, padding=(2, 0), groups=2, bias=False),
        nn.Conv2d(6, 6, 3, padding=1, padding_mode="circular"),
        nn.Flatten(), nn.Linear(6 * 6 * 4, 3),
    ).to(dtype)


X_SHAPE = (2, 3, 9, 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_counts_match_the_relaxed_models(dtype):
    model = small_cnn(dtype)
    fp = footprint(model, X_SHAPE)
    assert [ly.name for ly in fp.layers] == ["0", "4", "5"]
    itemsize = torch.empty((), dtype=dtype).element_size()
    for target in ("cnn", "lc", "fc"):
        # the circular-padded conv has no eLCN: compare the lc column on the other layers only
        layers = ["0", "4"] if target == "lc" else None
        real = model if target == "cnn" else relax(model, target, X_SHAPE, layers=layers)
        for ly in fp.layers:
            if target == "lc" and ly.name == "5":
                continue
            n = sum(p.numel() for p in real.get_submodule(ly.name).parameters())
            assert ly.params[target] == n, (target, ly.name)
            assert ly.bytes(target) == n * itemsize
        if target != "lc":
            assert fp.total_params(target) == sum(p.numel() for p in real.parameters())
            assert fp.total_bytes(target) == sum(p.numel() for p in real.parameters()) * itemsize
        assert fp.optimizer_bytes(target, "sgd") == fp.total_bytes(target)
        assert fp.optimizer_bytes(target, "adam") == 2 * fp.total_bytes(target)
    # padding columns: the reference eFCN is bigger exactly where there is padding
    by_name = {ly.name: ly for ly in fp.layers}
    assert by_name["0"].params["fc_ref"] > by_name["0"].params["fc"]
    assert by_name["4"].params["fc_ref"] > by_name["4"].params["fc"]  # (2, 0) padding: rows only
    assert footprint(model, X_SHAPE, to="fc", reference=False).targets == ("fc",)


def test_footprint_is_pure_and_works_on_relaxed_models():
    model = small_cnn()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    fp = footprint(model, X_SHAPE, to=("cnn", "fc"))
    assert torch.equal(torch.get_rng_state(), rng)  # Dropout ran but the RNG stream did not move
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm statistics unchanged
    relaxed = relax(model, "fc", X_SHAPE, layers=["0"])
    fp2 = footprint(relaxed, X_SHAPE, to=("cnn", "fc"))
    assert fp2.to_dict()["total"] == fp.to_dict()["total"]
    assert [ly.kind for ly in fp2.layers] == ["DenseConv", "Conv2d", "Conv2d"]


def test_table_and_dict():
    fp = footprint(small_cnn(), X_SHAPE)
    text = str(fp)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["layer", "in", "->", "out"]
    assert "3x9x8 -> 4x9x8" in text and "eFCN(ref)" in text and "+ Adam state" in text
    # right-aligned numeric columns: every layer row ends at the same column as the header
    rows = [ln for ln in lines if ln.split()[0] in ("0", "4", "5", "total")]
    assert len(rows) == 4 and {len(ln) for ln in rows} == {len(lines[0])}
    d = json.loads(json.dumps(fp.to_dict()))
    assert d["total"]["fc"]["adam_state_bytes"] == 2 * d["total"]["fc"]["bytes"]
    assert d["layers"][1]["geometry"]["padding"] == [[2, 2], [0, 0]]
    with pytest.raises(ValueError, match=r"to='conv'.*\('cnn', 'lc', 'fc'\)"):
        footprint(small_cnn(), X_SHAPE, to="conv")
    with pytest.raises(ValueError, match=r"target 'lc' was not computed"):
        footprint(small_cnn(), X_SHAPE, to="fc").total_bytes("lc")


def test_alexnet_efcn_is_about_half_the_reference():
    from archrelax.models import create_model

    model = create_model("alexnet", num_classes=100)
    fp = footprint(model, to=("cnn", "fc"))
    efcn, ref = fp.total_bytes("fc"), fp.total_bytes("fc_ref")
    print(f"CIFAR AlexNet eFCN {efcn / 1e9:.3f} GB, reference eFCN {ref / 1e9:.3f} GB, ratio {efcn / ref:.3f}")
    assert 0.90e9 < ref < 1.0e9  # the reference code's 0.95 GB
    assert 0.45 < efcn / ref < 0.6
    conv_params = {ly.name: ly.params["cnn"] for ly in fp.layers}
    assert conv_params["features.0"] == 64 * 3 * 16 + 64 and conv_params["features.3"] == 192 * 64 * 25 + 192


def test_cli(capsys):
    assert cli_main(["footprint", "alexnet", "--num-classes", "100"]) == 0
    out = capsys.readouterr().out
    assert "features.0" in out and "eFCN" in out and "eLCN" in out and "total" in out
    assert cli_main(["footprint", "alexnet", "--to", "lc", "--input-size", "40", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["targets"] == ["cnn", "lc"] and d["layers"][0]["geometry"]["in_spatial"] == [40, 40]
    assert cli_main(["footprint", "no_such_model"]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
