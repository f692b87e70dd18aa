"""Cost of verifying content digests, against the load they protect (archrelax.integrity).

1. The eFCN checkpoint of VanillaCNN (3x32x32, 10 classes, width 32): written by the trainer itself (one step of
   ``train(relax="fc")`` on synthetic data, SGD with momentum: weights + momentum buffers). Each round, from the
   page cache: ``torch.load(weights_only=True)`` alone, the digest check alone (``content_digest`` of the
   loaded dict), and ``load_checkpoint`` (both). Target: verify/load <= 0.2.
2. The decoded data cache of CIFAR-10 (``imagefolder:`` of the JPEG zip, 60,000 images, uint8): the cache is
   loaded memory-mapped, so ``torch.load`` itself reads almost nothing; the check reads every page once.
   Reported against the mmap load, and against a load that reads every byte (``mmap=False``).
3. For the choice of hash: xxh3-128 against crc32, sha256 and blake2b over the checkpoint's tensor bytes.

Medians over rounds. ``--cifar`` (default: ../shared/data/cifar10-jpeg.zip or $ARCHRELAX_CIFAR10_ZIP; the
first run decodes it into $ARCHRELAX_CACHE, a minute or two); ``--no-cifar`` skips part 2.

    python benchmarks/bench_integrity.py [--rounds 5] [--threads N] [--cifar PATH | --no-cifar]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import torch

from archrelax.data import load_data
from archrelax.data.cache import default_cache_dir
from archrelax.integrity import content_digest
from archrelax.train import TrainConfig, load_checkpoint, train

DEFAULT_ZIP = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.zip"


def median_time(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def efcn_checkpoint(folder: Path) -> Path:
    cfg = TrainConfig(model="vanilla_cnn", relax="fc", data="synthetic:3x32x32:10:250:250", batch_size=250, epochs=1,
                      eval_times=[1], device="cpu", progress=False)
    train(cfg, folder)
    return folder / "checkpoints" / "last.pt"


def tensor_bytes(obj) -> list[memoryview]:
    out = []
    if isinstance(obj, torch.Tensor):
        out.append(memoryview(obj.contiguous().reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, dict):
        for v in obj.values():
            out += tensor_bytes(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out += tensor_bytes(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cifar", type=Path, default=Path(os.environ.get("ARCHRELAX_CIFAR10_ZIP", DEFAULT_ZIP)))
    ap.add_argument("--no-cifar", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = args.rounds
    with tempfile.TemporaryDirectory(prefix="bench-integrity-") as tmp:
        path = efcn_checkpoint(Path(tmp) / "efcn")
        size = path.stat().st_size
        ck = torch.load(path, weights_only=True)  # the page cache holds it now
        t_load = median_time(lambda: torch.load(path, weights_only=True), r)
        t_verify = median_time(lambda: content_digest(ck), r)
        t_both = median_time(lambda: load_checkpoint(path), r)
        print(f"eFCN checkpoint of VanillaCNN: {size / 1e6:.0f} MB ({path.name}, weights + SGD momentum)")
        print(f"  torch.load {t_load:.3f} s, verify {t_verify:.3f} s, load_checkpoint {t_both:.3f} s")
        print(f"  verify/load = {t_verify / t_load:.3f} (target <= 0.2); load_checkpoint/torch.load = "
              f"{t_both / t_load:.3f}")
        bufs = tensor_bytes(ck)
        nbytes = sum(b.nbytes for b in bufs)

        def hashed(make):
            def run():
                h = make()
                for b in bufs:
                    h.update(b)
            return run

        def crc():
            c = 0
            for b in bufs:
                c = zlib.crc32(b, c)

        import xxhash

        for name, fn in (("xxh3_128", hashed(xxhash.xxh3_128)), ("crc32", crc), ("sha256", hashed(hashlib.sha256)),
                         ("blake2b", hashed(hashlib.blake2b))):
            t = median_time(fn, r)
            print(f"  hash {name:8s} over {nbytes / 1e6:.0f} MB of tensors: {t:.3f} s = {t / t_load:.3f} of torch.load "
                  f"({nbytes / t / 1e9:.1f} GB/s)")
        del ck, bufs
    if args.no_cifar:
        return
    if not args.cifar.is_file():
        print(f"data cache: skipped, no {args.cifar} (give --cifar PATH)")
        return
    source = f"imagefolder:{args.cifar}"
    load_data(source)  # decodes into the cache on the first run
    caches = sorted(default_cache_dir().glob("imagefolder-*.pt"), key=lambda p: p.stat().st_mtime)
    cache = caches[-1]
    rec = torch.load(cache, weights_only=True, mmap=True)
    n = len(rec["train_labels"]) + len(rec["test_labels"])
    t_mmap = median_time(lambda: torch.load(cache, weights_only=True, mmap=True), r)
    t_full = median_time(lambda: torch.load(cache, weights_only=True), r)
    t_verify = median_time(lambda: content_digest(torch.load(cache, weights_only=True, mmap=True)), r)
    t_data = median_time(lambda: load_data(source), r)
    print(f"data cache of CIFAR-10 ({n} images, {cache.stat().st_size / 1e6:.0f} MB, {cache.name})")
    print(f"  torch.load mmap {t_mmap:.4f} s, torch.load reading all {t_full:.3f} s, mmap load + verify "
          f"{t_verify:.3f} s, load_data (verified) {t_data:.3f} s")
    print(f"  verify/full load = {t_verify / t_full:.3f}; verify/mmap load = {t_verify / t_mmap:.0f}")


if __name__ == "__main__":
    main()
