"""Models from the ecosystem: any nn.Module factory from the command line (torchvision's resnet18, mobilenet_v3_small,
efficientnet_b0 relaxed and trained through `archrelax train`), a factory module in the current folder, and
relax()'s shape probe in eval mode at batch >= 2 with the model's modes and buffers restored."""
from __future__ import annotations

import os
import sys
import textwrap

import pytest
import torch
from torch import nn

from archrelax import relax
from archrelax.cli import main as cli_main
from archrelax.models import build_architecture, create_model, data_kwargs
from archrelax.train import TrainConfig
from archrelax.train.checkpoint import load_checkpoint, model_from_checkpoint

tv = pytest.importorskip("torchvision.models")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_model_relaxed_and_trained_from_the_command_line(name, tmp_path, capsys):
    out = tmp_path / name
    rc = cli_main(["train", f"torchvision.models:{name}", "--input-shape", "3x16x16",
                   "--data", "synthetic:3x16x16:10:8:8", "--relax", "lc", "--epochs", "1", "--batch-size", "8",
                   "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    assert "done at epoch 1" in capsys.readouterr().out
    ck = load_checkpoint(out / "final.pt")
    # only num_classes came from the data; the input shape is the arch record's, so the run rebuilds without help
    assert ck["arch"]["model_kwargs"] == {"num_classes": 10} and ck["arch"]["input_shape"] == "3x16x16"
    model = model_from_checkpoint(ck).eval()
    assert model.input_shape == (3, 16, 16)
    assert any(type(m).__name__ == "LocallyConnected2d" for m in model.modules())
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


def test_a_model_without_input_shape_says_how_to_give_it(tmp_path, capsys):
    # the trainer's data keys reach torchvision's ResNet.__init__, which has no in_channels
    rc = cli_main(["train", "torchvision.models:resnet18", "--data", "synthetic:3x16x16:10:8:8", "--epochs", "1",
                   "--out", str(tmp_path / "r")])
    assert rc == 2 and "--input-shape CxHxW" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"does not say its input shape.*--input-shape CxHxW"):
        create_model("torchvision.models:resnet18")
    with pytest.raises(ValueError, match=r"declares input_shape \(3, 32, 32\) but input_shape 1x28x28 was given"):
        create_model("vanilla_cnn", input_shape="1x28x28")
    assert create_model("torchvision.models:resnet18", input_shape=(3, 8, 8), num_classes=3).input_shape == (3, 8, 8)
    assert cli_main(["footprint", "torchvision.models:mobilenet_v3_small", "--input-shape", "3x32x32"]) == 0
    assert "3x32x32" in capsys.readouterr().out
    # what the trainer passes: every data key to archrelax's factories, only num_classes (and what a factory
    # names) to one whose input shape is given apart
    assert data_kwargs("vanilla_cnn", 10, (1, 28, 28)) == {"num_classes": 10, "in_channels": 1, "input_size": 28}
    assert data_kwargs("torchvision.models:resnet18", 10, (3, 8, 8), input_shape=True) == {"num_classes": 10}
    assert data_kwargs("vanilla_cnn", 10, (3, 8, 6), input_shape=True) == {"num_classes": 10, "in_channels": 3,
                                                                          "input_size": [8, 6]}
    # the baselines hand the input shape to their base
    fcn = build_architecture({"model": "fcn", "model_kwargs": {"base": "torchvision.models:mobilenet_v3_small",
                                                               "num_classes": 4}, "input_shape": "3x8x8"})
    assert fcn.input_shape == (3, 8, 8)


def test_input_shape_setting(tmp_path):
    assert TrainConfig(input_shape=(3, 32, 32)).input_shape == "3x32x32"  # one spelling: the run id's
    assert TrainConfig(input_shape="3X32x32").input_shape == "3x32x32"
    with pytest.raises(ValueError, match=r"input_shape='3x32' is not valid; allowed: CxHxW"):
        TrainConfig(input_shape="3x32")
    from archrelax.train.trainer import train

    cfg = TrainConfig(model="torchvision.models:resnet18", input_shape="3x32x32", data="synthetic:3x16x16:10:8:8",
                      epochs=1, batch_size=8)
    with pytest.raises(ValueError, match=r"input_shape 3x32x32 but the data .* has images of shape 3x16x16"):
        train(cfg, tmp_path / "r")
    # the spec's key reaches every planned run's config, and its check knows the factory takes no in_channels
    from archrelax.protocol import spec_from_dict
    from archrelax.protocol.plan import make_plan

    spec = spec_from_dict({"model": "torchvision.models:resnet18", "input_shape": "3x16x16",
                           "data": "synthetic:3x16x16:10:8:8", "cnn": {"epochs": 1, "until_zero_loss": False},
                           "relaxed": {"epochs": 1, "until_zero_loss": False}, "switch_times": [0]})
    assert {r.config["input_shape"] for r in make_plan(spec).values()} == {"3x16x16"}


def test_factory_module_in_the_current_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "mymodels_cwd.py").write_text(textwrap.dedent("""
        from torch import nn
        def tiny(num_classes=10):
            return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(2 * 8 * 8, num_classes))
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    rc = cli_main(["train", "mymodels_cwd:tiny", "--input-shape", "1x8x8", "--data", "synthetic:1x8x8:3:8:8",
                   "--relax", "fc", "--epochs", "1", "--batch-size", "4", "--out", "run"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    with pytest.raises(ValueError) as e:
        create_model("nowhere_to_be_found:net")
    msg = str(e.value)
    assert "cannot import module 'nowhere_to_be_found'" in msg and "first entries:" in msg
    assert "run from the folder that holds nowhere_to_be_found.py" in msg and "PYTHONPATH" in msg
    (tmp_path / "broken_cwd.py").write_text("import not_installed_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"importing module 'broken_cwd' failed: No module named "
                                         r"'not_installed_anywhere' \(a module it imports is not installed\)"):
        create_model("broken_cwd:net")


# ---- the shape probe ---------------------------------------------------------------------------------------


class Counted(nn.Module):
    """conv -> BatchNorm -> flatten -> BatchNorm1d -> linear, counting its forward calls; an auxiliary conv head
    that only runs in train mode (as GoogLeNet's and Inception's do)."""

    calls = 0

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.bn1 = nn.BatchNorm1d(4 * 6 * 6)
        self.fc = nn.Linear(4 * 6 * 6, 5)
        self.aux = nn.Conv2d(4, 2, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        Counted.calls += 1
        h = torch.relu(self.bn(self.conv(x)))
        y = self.fc(self.drop(self.bn1(h.flatten(1))))
        if self.training:
            y = y + self.aux(h).mean()
        return y


def test_probe_in_eval_mode_at_batch_1_with_modes_and_buffers_restored():
    torch.manual_seed(0)
    m = Counted()
    m.bn.eval()  # a user's choice of modes is kept
    before = {k: v.clone() for k, v in m.state_dict().items()}
    Counted.calls = 0
    r = relax(m, "lc", example_input=(1, 3, 6, 6))  # train-mode BatchNorm1d would refuse a batch of 1
    # one pass in eval mode (shapes and the check's reference), one in train mode for the aux head, one of the
    # relaxed model: the source's eval-mode output is not computed twice
    assert Counted.calls == 3
    assert type(r.aux).__name__ == "LocallyConnected2d"  # the train-only conv was reached
    assert m.training and not m.bn.training and m.bn1.training and r.training and not r.bn.training
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # running stats untouched
    m.eval(), r.eval()
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(m(x), r(x), atol=1e-5)


def test_torchvision_mobilenet_relaxes_from_a_batch_of_one():
    m = tv.mobilenet_v3_small(num_classes=10)
    r = relax(m, "lc", example_input=(1, 3, 32, 32), layers=["features.0.*", "features.1.*"])
    assert m.training and r.training
    m.eval(), r.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(m(x), r(x), atol=1e-4)
