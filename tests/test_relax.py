"""relax() and transfer() on whole models: exactness, partial relaxation, gradients, purity, errors."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archrelax.embed import DenseConv, LocallyConnected1d, LocallyConnected2d, RelaxedConv, relax, transfer
from archrelax.embed.relax import available_memory, memory_need

F64 = torch.float64
# torch's own performance note about Functional.conv1 ('same' padding with an even kernel)
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


class Block(nn.Module):
    """Residual block with BatchNorm; a 1x1 conv shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
                      if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = Block(4, 4)
        self.layer2 = Block(4, 8, stride=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(F.relu(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Functional(nn.Module):
    """forward() made of functionals around nn.Conv2d modules; a non-square kernel, 'same' padding, groups."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, (3, 2), padding="same", padding_mode="zeros")
        self.conv2 = nn.Conv2d(6, 4, 3, stride=(1, 2), dilation=(2, 1), groups=2)
        self.fc = nn.Linear(4 * 6 * 3, 3)

    def forward(self, x):  # (B, 3, 9, 12)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 6, 4, 6)
        x = F.relu(self.conv2(F.pad(x, (1, 1, 3, 3))))
        return self.fc(torch.flatten(x, 1))


def sequential_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, stride=2, padding=2), nn.ReLU(), nn.Dropout(0.3), nn.Flatten(), nn.Linear(8 * 5 * 5, 4),
    )


def conv1d_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(2, 4, 5, padding=2), nn.Tanh(), nn.Conv1d(4, 6, 3, stride=2, dilation=2, groups=2, bias=False),
        nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6, 3),
    )


MODELS = {  # name -> (factory, input shape)
    "resnet_bn": (TinyResNet, (4, 3, 8, 8)),
    "sequential": (sequential_cnn, (3, 3, 14, 14)),
    "functional": (Functional, (2, 3, 9, 12)),
    "conv1d": (conv1d_model, (3, 2, 15)),
}


def make(name: str, dtype=F64, seed: int = 0):
    torch.manual_seed(seed)
    factory, shape = MODELS[name]
    model = factory().to(dtype)
    # non-trivial BatchNorm statistics and affine parameters, so eval mode is a real test
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return model, torch.randn(shape, dtype=dtype)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def relaxed_types(model: nn.Module) -> dict[str, type]:
    return {n: type(m) for n, m in model.named_modules() if isinstance(m, RelaxedConv)}


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("to", ["lc", "fc"])
@pytest.mark.parametrize("name", list(MODELS))
def test_whole_model_exact_float64(name, to):
    model, x = make(name)
    model.eval()
    before = state(model)
    relaxed = relax(model, to, x)
    n_convs = sum(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in model.modules())
    expected = DenseConv if to == "fc" else (LocallyConnected1d if name == "conv1d" else LocallyConnected2d)
    types = relaxed_types(relaxed)
    assert len(types) == n_convs and set(types.values()) == {expected}
    assert not any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in relaxed.modules())
    assert set(relaxed.state_dict()) == set(before)  # same keys, only shapes differ
    with torch.no_grad():
        assert rel_err(relaxed.eval()(x), model(x)) <= 1e-10
    for k, v in model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("to", ["lc", "fc"])
def test_resnet_train_mode_batchnorm(to):
    model, x = make("resnet_bn")
    model.train()
    before = state(model)
    relaxed = relax(model, to, x)
    assert relaxed.training
    # the shape-capturing forward pass must not have moved the BN statistics of either model
    for k, v in before.items():
        if "running" in k or "num_batches" in k:
            assert torch.equal(model.state_dict()[k], v) and torch.equal(relaxed.state_dict()[k], v), k
    ref = copy.deepcopy(model)
    out_ref, out = ref(x), relaxed(x)  # both in train mode on the same batch: batch statistics
    assert rel_err(out, out_ref) <= 1e-10
    for k in before:  # and they update their running stats identically
        if "running" in k:
            assert rel_err(relaxed.state_dict()[k], ref.state_dict()[k]) <= 1e-10


def test_float32_exact_and_dtype_kept():
    model, x = make("functional", dtype=torch.float32)
    for to in ("lc", "fc"):
        relaxed = relax(model, to, x)
        assert all(p.dtype == torch.float32 for p in relaxed.parameters())
        with torch.no_grad():
            assert rel_err(relaxed(x), model(x)) <= 1e-5


def test_example_input_as_shape_and_input_shape():
    model, x = make("sequential")
    model.eval()
    with_shape = relax(model, "lc", tuple(x.shape))
    model.input_shape = tuple(x.shape[1:])  # (C, H, W), as archrelax.models declare it
    with_declared = relax(model, "lc")
    for r in (with_shape, with_declared):
        with torch.no_grad():
            assert rel_err(r(x), model(x)) <= 1e-10


def test_no_global_rng_advance():
    model, x = make("sequential")  # has Dropout, in train mode
    rng = torch.get_rng_state()
    relax(model, "fc", x)
    assert torch.equal(torch.get_rng_state(), rng)


def test_partial_relaxation_by_names_globs_predicate():
    model, x = make("resnet_bn")
    model.eval()
    by_name = relax(model, "fc", x, layers=["stem", "layer2.short.0"])
    assert relaxed_types(by_name) == {"stem": DenseConv, "layer2.short.0": DenseConv}
    by_glob = relax(model, "lc", x, layers="layer1.*")
    assert relaxed_types(by_glob) == {"layer1.conv1": LocallyConnected2d, "layer1.conv2": LocallyConnected2d}
    by_pred = relax(model, "fc", x, layers=lambda n, m: m.kernel_size == (1, 1))
    assert relaxed_types(by_pred) == {"layer2.short.0": DenseConv}
    with torch.no_grad():
        for r in (by_name, by_glob, by_pred):
            assert rel_err(r(x), model(x)) <= 1e-10
    # a partially relaxed model can be relaxed further; its LC layers go to fc (hierarchical)
    mixed = relax(by_glob, "fc", x, layers=["layer1.conv1", "stem"])
    assert relaxed_types(mixed) == {"stem": DenseConv, "layer1.conv1": DenseConv, "layer1.conv2": LocallyConnected2d}
    with torch.no_grad():
        assert rel_err(mixed(x), model(x)) <= 1e-10


@pytest.mark.parametrize("name", ["sequential", "conv1d"])
def test_hierarchical_equals_direct(name):
    model, x = make(name)
    direct = relax(model, "fc", x)
    hier = relax(relax(model, "lc", x), "fc", x)
    assert relaxed_types(hier) == relaxed_types(direct)
    sd_d, sd_h = direct.state_dict(), hier.state_dict()
    assert list(sd_d) == list(sd_h)
    for k in sd_d:
        assert torch.equal(sd_d[k], sd_h[k]), k


def test_gradients_reach_every_relaxed_weight():
    model, x = make("resnet_bn")
    efcn = relax(model, "fc", x)
    efcn.train()
    torch.manual_seed(1)
    F.cross_entropy(efcn(x), torch.randint(0, 5, (x.shape[0],))).backward()
    for name, layer in relaxed_types(efcn).items():
        layer = efcn.get_submodule(name)
        g, mask = layer.weight.grad, layer.local_mask()
        assert g is not None, name
        # off-local entries are free parameters: they get gradients (zero only where a ReLU zeroed a whole column)
        assert (g[~mask] != 0).float().mean() > 0.5, name
        assert (g[mask] != 0).any(), name
    elcn = relax(model, "lc", x)
    elcn(x).square().sum().backward()
    for name in relaxed_types(elcn):
        layer = elcn.get_submodule(name)
        g = layer.weight.grad
        live = g[layer.local_mask()]
        assert (live != 0).float().mean() > 0.5, name
        # unshared: the filters of different positions get different gradients
        assert not torch.equal(g[:, 0], g[:, -1]), name


def test_frozen_and_eval_flags_kept():
    model, x = make("sequential")
    model[0].weight.requires_grad_(False)
    model[3].eval()
    r = relax(model, "fc", x)
    assert not r[0].weight.requires_grad and r[0].bias.requires_grad and r[3].weight.requires_grad
    assert not r[3].training and r[0].training


def test_shared_conv_called_twice_same_shape():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.alias = self.conv  # the same module under a second path

        def forward(self, x):
            return self.alias(F.relu(self.conv(x)))

    torch.manual_seed(0)
    model, x = Twice().double(), torch.randn(2, 3, 6, 6, dtype=F64)
    r = relax(model, "lc", x)
    assert r.conv is r.alias and isinstance(r.conv, LocallyConnected2d)
    with torch.no_grad():
        assert rel_err(r(x), model(x)) <= 1e-10


def test_transfer_maps_like_relax():
    model, x = make("resnet_bn")
    for to in ("lc", "fc"):
        relaxed = relax(model, to, x)
        mapped = transfer(model.state_dict(), relaxed)
        assert set(mapped) == set(model.state_dict())
        for k, v in relaxed.state_dict().items():
            assert torch.equal(mapped[k], v), (to, k)
        # any conv-shaped tensor (e.g. a momentum buffer) goes through the same φ
        buf = torch.randn_like(model.stem.weight)
        assert torch.equal(transfer({"stem.weight": buf}, relaxed)["stem.weight"], relaxed.stem.embed_weight(buf))
        # already relaxed-shaped tensors and other keys pass through
        same = transfer({"stem.weight": relaxed.stem.weight, "fc.weight": model.fc.weight}, relaxed)
        assert same["stem.weight"] is relaxed.stem.weight and same["fc.weight"] is model.fc.weight


def test_transfer_lc_tensors_onto_efcn():
    model, x = make("conv1d")
    elcn = relax(model, "lc", x)
    with torch.no_grad():  # make the eLCN's filters really unshared
        for p in elcn.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hier = relax(elcn, "fc", x)
    rng = torch.get_rng_state()
    mapped = transfer(elcn.state_dict(), hier)
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in hier.state_dict().items():
        assert torch.equal(mapped[k], v), k
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(2, 3\); valid for this DenseConv are the conv's \(4, 2, 5\)"):
        transfer({"0.weight": torch.zeros(2, 3)}, hier)


# ---- errors -----------------------------------------------------------------------------------------------


def test_error_conv_transpose_and_conv3d():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ConvTranspose2d(2, 1, 3))
    with pytest.raises(ValueError, match=r"'1' is a ConvTranspose2d.*layers="):
        relax(model, "fc", (1, 1, 6, 6))
    r = relax(model, "fc", (1, 1, 6, 6), layers=["0"])  # excluding it works
    assert isinstance(r[0], DenseConv) and isinstance(r[1], nn.ConvTranspose2d)
    with pytest.raises(ValueError, match=r"'0' is a Conv3d"):
        relax(nn.Sequential(nn.Conv3d(1, 1, 2)), "lc", (1, 1, 3, 3, 3))


def test_error_padding_mode_for_lc():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), nn.Conv2d(2, 2, 3, padding=1))
    x = torch.randn(2, 2, 6, 6, dtype=F64)
    model = model.double()
    with pytest.raises(ValueError, match=r"layer '0' has padding_mode='reflect'.*to='fc'.*layers="):
        relax(model, "lc", x)
    with torch.no_grad():
        assert rel_err(relax(model, "fc", x)(x), model(x)) <= 1e-10  # folds into the eFCN exactly
        assert rel_err(relax(model, "lc", x, layers=["1"])(x), model(x)) <= 1e-10


def test_error_unused_layer_and_no_conv_and_bad_names():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ValueError, match=r"\['spare'\] never ran in the forward pass.*check example_input"):
        relax(Unused(), "lc", (1, 1, 5, 5))
    assert isinstance(relax(Unused(), "lc", (1, 1, 5, 5), layers=["used"]).used, LocallyConnected2d)
    with pytest.raises(ValueError, match=r"nothing to relax.*no Conv1d/Conv2d"):
        relax(nn.Sequential(nn.Linear(3, 3)), "fc", (2, 3))
    model, x = make("resnet_bn")
    with pytest.raises(ValueError, match=r"\['layer9\.\*'\] match no conv layer.*available: \['stem', 'layer1.conv1'"):
        relax(model, "lc", x, layers=["stem", "layer9.*"])
    with pytest.raises(ValueError, match=r"to='conv'.*'lc'.*'fc'"):
        relax(model, "conv", x)
    efcn = relax(model, "fc", x)
    with pytest.raises(ValueError, match="nothing to relax"):
        relax(efcn, "fc", x)


def test_error_example_input_wrong_shape():
    model, _ = make("sequential")
    with pytest.raises(ValueError, match=r"forward pass of example_input \(shape \(2, 3, 9, 9\)\).*failed"):
        relax(model, "lc", (2, 3, 9, 9))


def test_error_conv_called_with_two_shapes():
    class TwoShapes(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x).mean() + self.conv(F.avg_pool2d(x, 2)).mean()

    with pytest.raises(ValueError, match=r"'conv' saw input spatial shapes \[\(4, 4\), \(8, 8\)\]"):
        relax(TwoShapes(), "fc", (1, 2, 8, 8))


def test_memory_guard():
    # a 1-channel 3x3 conv on a 1024x1024 image: its eFCN would need ~4 TB
    model = nn.Sequential(nn.Conv2d(1, 1, 3))
    with pytest.raises(MemoryError, match=r"needs about 4.\d+e\+03 GB.*available.*force=True") as exc:
        relax(model, "fc", (1, 1, 1024, 1024))
    assert isinstance(exc.value, ValueError)  # so the CLI prints it as a user error
    free = available_memory(torch.device("cpu"))
    assert free is not None and 0 < free < 1 << 50


@pytest.mark.parametrize("to, layers", [("fc", None), ("lc", None), ("fc", ["1"]), ("attn", None), ("tiled:2", "0")])
def test_memory_need_is_what_the_guard_counts(monkeypatch, to, layers):
    import sys

    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 3, stride=2))
    before = copy.deepcopy(model.state_dict())
    need = memory_need(model, to, (1, 2, 9, 9), layers)
    cpu = torch.device("cpu")
    assert list(need) == [cpu] and need[cpu] > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # the guard refuses one byte short of that count and passes at it
    mod = sys.modules["archrelax.embed.relax"]  # the module (archrelax.embed.relax is also the function's name)
    monkeypatch.setattr(mod, "available_memory", lambda device: need[cpu] - 1)
    with pytest.raises(MemoryError):
        relax(model, to, (1, 2, 9, 9), layers=layers)
    monkeypatch.setattr(mod, "available_memory", lambda device: need[cpu])
    relax(model, to, (1, 2, 9, 9), layers=layers)


# ---------------------------------------------------------------------------------------------------------
# models whose forward() takes several tensors or a dict: example_input as a tuple or a dict


class TwoInputs(nn.Module):
    """forward(x, mask): a conv per input (different shapes), summed."""

    input_shape = ((3, 8, 8), (1, 16, 16))

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)  # (3, 8, 8) -> (4, 8, 8)
        self.b = nn.Conv2d(1, 4, 3, stride=2, padding=1)  # (1, 16, 16) -> (4, 8, 8)
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x, mask):
        return self.head(F.relu(self.a(x) + self.b(mask)).flatten(1))


class DictBatch(TwoInputs):
    """forward(batch) with batch = {"image": ..., "mask": ...}."""

    input_shape = {"image": (3, 8, 8), "mask": (1, 16, 16)}

    def forward(self, batch):
        return super().forward(batch["image"], batch["mask"])


class Keywords(TwoInputs):
    """forward(image, mask): called with keyword arguments."""

    def forward(self, image, mask):
        return super().forward(image, mask)


def _pair(batch=3):
    return torch.randn(batch, 3, 8, 8, dtype=F64), torch.randn(batch, 1, 16, 16, dtype=F64)


# several tensors, and a dict of tensors: rows of tests/test_faults.py (SEVERAL_TENSORS, DICT_OF_TENSORS)
SEVERAL_TENSORS = (TwoInputs, lambda: _pair(1), lambda m, x, k: m(x, k))
DICT_OF_TENSORS = (DictBatch, lambda: dict(zip(("image", "mask"), _pair(1))), lambda m, x, k: m({"image": x, "mask": k}))


@pytest.mark.parametrize("to", ["lc", "fc"])
@pytest.mark.parametrize("cls, example, call", [
    (TwoInputs, lambda: ((1, 3, 8, 8), (1, 1, 16, 16)), lambda m, x, k: m(x, k)),
    (TwoInputs, lambda: [(3, 8, 8), torch.zeros(2, 1, 16, 16, dtype=F64)], lambda m, x, k: m(x, k)),
    (TwoInputs, lambda: None, lambda m, x, k: m(x, k)),  # the declared tuple of (C, H, W)
    (DictBatch, lambda: {"image": (1, 3, 8, 8), "mask": (1, 1, 16, 16)}, lambda m, x, k: m({"image": x, "mask": k})),
    (DictBatch, lambda: ({"image": (3, 8, 8), "mask": (1, 16, 16)},), lambda m, x, k: m({"image": x, "mask": k})),
    (DictBatch, lambda: None, lambda m, x, k: m({"image": x, "mask": k})),  # the declared dict
    (Keywords, lambda: {"mask": (1, 1, 16, 16), "image": (1, 3, 8, 8)}, lambda m, x, k: m(image=x, mask=k)),
], ids=["shapes", "list-mixed", "declared-tuple", "dict-shapes", "tuple-of-dict", "declared-dict", "keywords"])
def test_relax_models_of_several_inputs_is_exact(to, cls, example, call):
    check_several_inputs(to, cls, example, call)


def check_several_inputs(to: str, cls, example, call) -> None:
    """relax(cls(), to, example()) computes the model's function exactly, called as ``call`` does."""
    torch.manual_seed(0)
    model = cls().double()
    relaxed = relax(model, to, example())
    assert set(relaxed_layers_of(relaxed)) == {"a", "b"}
    x, k = _pair()
    with torch.no_grad():
        torch.testing.assert_close(call(relaxed, x, k), call(model, x, k), rtol=0, atol=1e-10)


def relaxed_layers_of(model):
    return {n for n, m in model.named_modules() if isinstance(m, RelaxedConv)}


def test_footprint_of_a_model_of_two_inputs():
    from archrelax.embed.footprint import footprint

    fp = footprint(TwoInputs(), ((1, 3, 8, 8), (1, 1, 16, 16)), to="fc", reference=False)
    # eFCN: c_out * P * c_in * Q (+ a bias per output unit) for each conv
    assert fp.layers[0].params["fc"] == 4 * 64 * 3 * 64 + 4 * 64
    assert fp.layers[1].params["fc"] == 4 * 64 * 1 * 256 + 4 * 64


@pytest.mark.parametrize("example, text", [
    ("3x8x8", r"example_input str '3x8x8' is not an accepted form; give a tensor; a shape such as \(1, 3, 32, 32\).*"
              r"a tuple of tensors/shapes.*a dict of tensors/shapes"),
    ({"image": "big", "mask": (1, 1, 16, 16)}, r"example_input \{'image': str 'big', 'mask': tuple \(1, 1, 16, 16\)\} "
                                                r"is not an accepted form: str 'big' is neither a tensor nor a shape"),
    ((torch.zeros(1, 3, 8, 8),), r"forward pass of example_input \(shape \(1, 3, 8, 8\)\) through TwoInputs failed: "
                                  r"TypeError: .*missing 1 required positional argument: 'mask'; pass an input"),
    ((1, -3, 8), r"example_input tuple \(1, -3, 8\) is not an accepted form: a shape needs integers >= 0"),
    ((), r"example_input tuple \(\) is not an accepted form"),
])
def test_example_input_errors_name_what_was_given_and_the_accepted_forms(example, text):
    with pytest.raises(ValueError, match=text):
        relax(TwoInputs(), "fc", example)


# ---- relax() checks what it returns ---------------------------------------------------------------------------


class WeightReading(nn.Module):
    """``fc(relu(self.conv(x) / self.conv.weight.abs().mean()))``: forward reads the conv's weight outside the conv,
    which the relaxation cannot follow (the eFCN's weight is mostly the zeros outside the receptive fields)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, width: int = 4):
        super().__init__()
        self.input_shape = (in_channels, input_size, input_size)
        self.conv = nn.Conv2d(in_channels, width, 5, stride=2, padding=2)
        self.fc = nn.Linear(width * ((input_size + 1) // 2) ** 2, num_classes)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x) / self.conv.weight.abs().mean()).flatten(1))


class FunctionalConv(nn.Module):
    """A conv module whose weight is applied a second time through F.conv2d."""

    input_shape = (2, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x) + F.conv2d(x, self.conv.weight, padding=1)


class WithDropout(nn.Module):
    """Dropout in train mode: the check compares in eval mode, so it is not fooled by dropout's draws."""

    input_shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv, self.drop, self.fc = nn.Conv2d(1, 3, 3), nn.Dropout(0.5), nn.Linear(3 * 36, 2)

    def forward(self, x):
        return self.fc(self.drop(F.relu(self.conv(x))).flatten(1))


def weight_reading_cnn(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """``archrelax train test_relax:weight_reading_cnn``: the model of tests/test_faults.py's relax row."""
    return WeightReading(num_classes, in_channels, input_size)


def check_relax_refuses_what_it_cannot_follow(cls, what: str) -> None:
    """relax() of a model whose forward defeats the swap raises, naming the likely causes; check=False skips it."""
    from archrelax.embed.check import RelaxCheckError

    torch.manual_seed(0)
    model = cls()
    for to in ("fc", "lc"):
        with pytest.raises(RelaxCheckError, match=rf"relax\(to='{to}'\) of {cls.__name__}: the relaxed model does not "
                           rf"compute the source's function: {what}.*reads a conv's parameters outside the conv.*"
                           r"functional conv \(F.conv2d\).*pass check=False"):
            relax(model, to)
    relaxed = relax(model, "fc", check=False)  # skipped: the caller knows
    x = torch.randn(2, *model.input_shape)
    with torch.no_grad():
        try:
            assert (relaxed(x) - model(x)).abs().max() > 1e-2 * model(x).abs().max()  # it was right to refuse
        except RuntimeError:  # or it cannot run at all
            pass


DIFFER = r"outputs differ by up to .* \(relative .*; the tolerance for float32 is 0.000122\)"
FAILS = r"its forward\(\) fails on a random input shaped like the example input \(RuntimeError: .*\)"


@pytest.mark.parametrize("cls, what", [(WeightReading, DIFFER), (FunctionalConv, FAILS)])
def test_relax_refuses_a_forward_it_cannot_follow(cls, what):
    check_relax_refuses_what_it_cannot_follow(cls, what)


def test_relax_check_compares_in_eval_mode_and_restores_modes():
    model = WithDropout().train()
    model.fc.eval()  # a mixed state, restored module by module
    before = {n: m.training for n, m in model.named_modules()}
    out = relax(model, "fc", example_input=(1, 1, 8, 8))  # batch 1 in train mode, as the trainer calls it
    assert {n: m.training for n, m in model.named_modules()} == before
    assert {n: m.training for n, m in out.named_modules()} == before


def test_relax_check_tolerance_per_dtype_and_registry_margin():
    from archrelax.embed.check import relative_error, tolerance
    from archrelax.models import create_model

    assert tolerance(torch.float32) == pytest.approx(1.22e-4, rel=1e-2)
    assert tolerance(torch.float64) == pytest.approx(2.27e-13, rel=1e-2)
    assert tolerance(torch.bfloat16) == tolerance(torch.float16) == 0.1
    torch.manual_seed(0)
    cnn = create_model("vanilla_cnn", width=8, num_classes=10)
    for to in ("lc", "fc", "wide:full", "tiled:2"):
        diff, scale, dtype = relative_error(cnn, relax(cnn, to, check=False), (2, 3, 32, 32))
        assert dtype == torch.float32 and diff / scale < tolerance(dtype) / 100, (to, diff / scale)
