#!/usr/bin/env python3
"""Write the small Fashion-MNIST subset the CI tests use (tests/data/), from Debian's
dataset-fashion-mnist: a fixed-seed sample of test images with their labels, and the first
training images for calibration. Uncompressed IDX, so the files diff and load simply.

  python3 scripts/make_test_subset.py [--test 300] [--calibration 200] [--seed 1]
"""
import argparse
import gzip
import os
import random
import struct

DATA = "/usr/share/datasets/fashion-mnist"


def read(name):
    with gzip.open(os.path.join(DATA, name + ".gz"), "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def write(path, dims, body):
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 8, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims) + body)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--calibration", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="tests/data")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    (n, h, w), images = read("t10k-images-idx3-ubyte")
    _, labels = read("t10k-labels-idx1-ubyte")
    pick = sorted(random.Random(args.seed).sample(range(n), args.test))
    size = h * w
    write(os.path.join(args.out, "fashion-test-images.idx"), (args.test, h, w),
          b"".join(images[i * size:(i + 1) * size] for i in pick))
    write(os.path.join(args.out, "fashion-test-labels.idx"), (args.test,),
          bytes(labels[i] for i in pick))
    _, train = read("train-images-idx3-ubyte")
    write(os.path.join(args.out, "fashion-calibration-images.idx"), (args.calibration, h, w),
          train[:args.calibration * size])
    print(f"{args.test} test images (seed {args.seed}) and {args.calibration} calibration images in {args.out}")


if __name__ == "__main__":
    main()
