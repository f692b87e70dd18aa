"""Content digests (archrelax.integrity): every file saved with torch carries one, every load checks it.

Damage is made the way a disk or a copy makes it: one byte flipped in place (tests/damage.py). The rows of
tests/test_faults.py run the commands a user runs; here are the mechanism's own promises.
"""
from __future__ import annotations

import json
import shutil
import zipfile

import pytest
import torch

from archrelax.integrity import DIGEST_KEY, content_digest, load_verified, seal
from archrelax.store import DamagedCheckpointError, DamagedFileError, RunFolder
from archrelax.train import TrainConfig, load_checkpoint
from archrelax.train.checkpoint import resume_point
from archrelax.utils import atomic_torch_save

from damage import flip_byte, tensor_members

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = "synthetic:1x28x28:10:100:50"
VOLATILE = ("wall_time", "peak_mem_bytes")


def config(**kw) -> TrainConfig:
    base = dict(model="vanilla_cnn", model_kwargs={"width": 4}, data=DATA, batch_size=50, epochs=3, eval_times="every",
                snapshots=[0, 1, 2], device="cpu", progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_one_thread):
    return train_one_thread(config(), tmp_path_factory.mktemp("run") / "run")


def files_of(run) -> list:
    return [run / "checkpoints" / "last.pt", run / "final.pt", *sorted((run / "snapshots").glob("*.pt"))]


def test_every_file_the_trainer_writes_carries_its_digest(run):
    for path in files_of(run):
        raw = torch.load(path, weights_only=True)
        assert raw[DIGEST_KEY].startswith("xxh3_128:") and len(raw[DIGEST_KEY]) == len("xxh3_128:") + 32, path
        assert content_digest(raw) == raw[DIGEST_KEY]
        assert load_checkpoint(path)["step"] == raw["step"]


@pytest.mark.parametrize("which", ["last", "final", "snapshot"])
@pytest.mark.parametrize("at", [0.0, 0.5, 1.0])
def test_one_flipped_tensor_byte_is_damage_named_in_one_line(run, tmp_path, which, at):
    src = {"last": run / "checkpoints" / "last.pt", "final": run / "final.pt",
           "snapshot": run / "snapshots" / "epoch_1.pt"}[which]
    bad = tmp_path / src.name
    shutil.copy(src, bad)
    torch.load(bad, weights_only=True)  # torch itself reads it without a word
    flip_byte(bad, at=at, mask=0x01)  # the lowest bit: a weight changes by one ulp
    with pytest.raises(DamagedFileError) as e:
        load_checkpoint(bad)
    msg = str(e.value)
    assert "\n" not in msg and e.value.path == str(bad)
    assert msg.startswith(f"checkpoint {str(bad)!r} is damaged: its content does not match the digest written with it")
    assert msg.endswith("restore it from a copy, or train the run that wrote it again")


def test_damage_to_the_pickled_structure_is_caught(run, tmp_path):
    """A byte of ``archive/data.pkl`` (the config, the step, the keys, the tensors' records): the file is
    unreadable (named by its zip CRC), read but not matching its digest, or read with the very same content (a
    byte the unpickler does not use, e.g. a memo index): never another content passed off as this one."""
    src = run / "checkpoints" / "last.pt"
    want = content_digest(load_checkpoint(src))
    outcomes = set()
    for i in range(40):
        bad = tmp_path / f"pkl-{i}.pt"
        shutil.copy(src, bad)
        flip_byte(bad, member=next(n for n in zipfile.ZipFile(bad).namelist() if n.endswith("data.pkl")), at=i / 40)
        try:
            got = load_checkpoint(bad)
        except DamagedFileError as e:
            assert str(bad) in str(e) and "\n" not in str(e)
            outcomes.add("unreadable" if "unreadable" in str(e) else "mismatch")
        except ValueError as e:  # the structure lost a key the format requires
            assert "is not an archrelax checkpoint: expected a dict with keys" in str(e), e
            outcomes.add("foreign")
        else:
            assert content_digest(got) == want
            outcomes.add("same")
    assert {"unreadable", "mismatch"} <= outcomes, outcomes


def test_digest_covers_values_types_shapes_and_structure():
    t = torch.arange(6, dtype=torch.float32)
    base = content_digest({"a": t, "b": [1, 2.0, "x", None, True]})
    variants = [
        {"a": t.reshape(2, 3), "b": [1, 2.0, "x", None, True]},  # same bytes, other shape
        {"a": t.view(torch.int32), "b": [1, 2.0, "x", None, True]},  # same bytes, other dtype
        {"a": t, "b": [1.0, 2.0, "x", None, True]},  # an int became a float
        {"a": t, "b": (1, 2.0, "x", None, True)},  # a list became a tuple
        {"a": t, "b": [1, 2.0, "x", None, 1]},  # a bool became an int
        {"b": [1, 2.0, "x", None, True], "a": t},  # the keys' order
        {"a": t, "b": [1, 2.0, "x", None, True], "c": None},
    ]
    assert len({base, *map(content_digest, variants)}) == len(variants) + 1
    assert content_digest({"a": t.clone(), "b": [1, 2.0, "x", None, True]}) == base
    assert content_digest({"a": t[::2]}) == content_digest({"a": t[::2].contiguous()})  # values, not the storage
    sealed = seal({"a": t})
    assert content_digest(sealed) == sealed[DIGEST_KEY] and seal(sealed) == sealed
    with pytest.raises(TypeError, match="cannot digest a set"):
        content_digest({"a": {1, 2}})


def test_files_written_before_digests_load_verified_by_their_zip_crcs(run, tmp_path):
    ck = load_checkpoint(run / "final.pt")
    old = tmp_path / "old.pt"
    torch.save({k: v for k, v in ck.items() if k != DIGEST_KEY}, old)  # as every file was written before
    assert DIGEST_KEY not in load_checkpoint(old)
    flip_byte(old)
    with pytest.raises(DamagedFileError, match=r"old.pt' is damaged: zip member \S+/data/\d+ does not match its "
                                               r"CRC-32 \(written before content digests\)"):
        load_checkpoint(old)


def test_a_file_written_without_crcs_and_without_a_digest_still_loads(run, tmp_path):
    ck = {k: v for k, v in load_checkpoint(run / "final.pt").items() if k != DIGEST_KEY}
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(ck, tmp_path / "nocrc.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert all(i.CRC == 0 for i in zipfile.ZipFile(tmp_path / "nocrc.pt").infolist())
    assert load_checkpoint(tmp_path / "nocrc.pt")["step"] == ck["step"]


def test_a_plain_tensor_file_is_saved_as_is(tmp_path):
    atomic_torch_save(torch.ones(3), tmp_path / "t.pt")  # not a dict: nothing to hold a digest
    assert torch.equal(load_verified(tmp_path / "t.pt"), torch.ones(3))


def _damaged_copy(run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    (out / "final.pt").unlink()
    st = json.loads((out / "status.json").read_text())
    (out / "status.json").write_text(json.dumps({**st, "status": "interrupted"}))  # as if stopped before the end
    flip_byte(out / "checkpoints" / "last.pt")
    return out


def test_resume_point_per_restart(run, tmp_path, capsys):
    out = _damaged_copy(run, tmp_path)
    folder = RunFolder(out)
    with pytest.raises(DamagedCheckpointError, match=r"last.pt' is damaged: .*; the run cannot resume from it: rerun "
                                                     r"with `archrelax train --restart intact`"):
        resume_point(folder)
    flip_byte(out / "snapshots" / "epoch_2.pt")  # the latest snapshot is damaged too: the one before is taken
    ck = resume_point(folder, "intact")
    err = capsys.readouterr().err
    assert ck["step"] == 2 and "skipping snapshot epoch_2.pt" in err
    assert "resuming from its latest intact snapshot epoch_1.pt (step 2) (restart=intact)" in err
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2  # last.pt is a resume point again
    flip_byte(out / "checkpoints" / "last.pt")
    assert resume_point(folder, "scratch") is None and not (out / "checkpoints" / "last.pt").exists()


def test_lockstep_members_resume_through_the_same_point(run, tmp_path):
    """A lockstep group sets its members up through the trainer's own _Run: a damaged member is marked damaged,
    the other member of the group trains on."""
    from archrelax.train.lockstep import train_lockstep

    bad = _damaged_copy(run, tmp_path)
    good = tmp_path / "good"
    res = train_lockstep([config(), config(seed=1)], [bad, good], log=lambda s: None)
    assert res[0]["status"] == "damaged" and "--restart intact" in res[0]["error"]
    assert res[1]["status"] == "done"
    res = train_lockstep([config(restart="intact"), config(seed=1)], [bad, good], log=lambda s: None)
    assert [r["status"] for r in res] == ["done", "done"]
    a, b = load_checkpoint(bad / "final.pt")["model"], load_checkpoint(run / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
