"""load_checkpoint: safe loading and clear errors for missing, truncated, corrupt and foreign files."""
from __future__ import annotations

import collections
import pickle

import pytest
import torch

from archrelax.train import TrainConfig, load_checkpoint, model_from_checkpoint, train

DATA = "synthetic:1x28x28:10:100:50"


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_one_thread):
    return train_one_thread(TrainConfig(model="vanilla_cnn", model_kwargs={"width": 4}, data=DATA, batch_size=50,
                                        epochs=1, eval_times=[1], snapshots=[0], device="cpu", progress=False),
                            tmp_path_factory.mktemp("run"))


def test_checkpoint_layout_and_model_rebuild(run):
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "config", "arch", "epoch", "global_epoch", "step", "rng"} <= set(ck)
    assert ck["epoch"] == 1.0 and ck["step"] == 2 and isinstance(ck["config"], dict)
    assert ck["arch"]["model_kwargs"] == {"width": 4, "num_classes": 10, "in_channels": 1, "input_size": 28}
    model = model_from_checkpoint(run / "final.pt")
    x = torch.randn(3, 1, 28, 28)
    assert model(x).shape == (3, 10)
    assert torch.equal(model.state_dict()["features.0.weight"], ck["model"]["features.0.weight"])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt.*does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("cut", [0, 100, 0.5, -10])
def test_truncated_file(run, tmp_path, cut):
    data = (run / "checkpoints" / "last.pt").read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else cut if cut >= 0 else len(data) + cut
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[:n])
    with pytest.raises(ValueError, match=r"cut\.pt.*truncated or corrupt"):
        load_checkpoint(bad)


def test_corrupt_bytes(run, tmp_path):
    data = bytearray((run / "checkpoints" / "last.pt").read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)  # zero out the first half (headers and all)
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt.pt.*truncated or corrupt"):
        load_checkpoint(bad)
    (tmp_path / "text.pt").write_text("hello, not a checkpoint\n")
    with pytest.raises(ValueError, match="text.pt.*truncated or corrupt"):
        load_checkpoint(tmp_path / "text.pt")


def test_foreign_files(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")  # someone else's checkpoint
    with pytest.raises(ValueError, match="other.pt.*not an archrelax checkpoint.*found \\['state_dict'\\]"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="tensor.pt.*not an archrelax checkpoint.*Tensor"):
        load_checkpoint(tmp_path / "tensor.pt")
    # an arbitrary pickled object: refused by weights_only, never executed
    with open(tmp_path / "pickle.pt", "wb") as f:
        pickle.dump(collections.Counter(a=1), f, protocol=2)
    with pytest.raises(ValueError, match="pickle.pt"):
        load_checkpoint(tmp_path / "pickle.pt")


def test_resume_from_corrupt_last_checkpoint_names_it(run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(run, out)
    (out / "status.json").unlink()  # pretend it was killed
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])
    cfg = TrainConfig.load(out / "config.json")
    with pytest.raises(ValueError, match="last.pt.*truncated or corrupt"):
        train(cfg, out)
