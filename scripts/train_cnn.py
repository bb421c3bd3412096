#!/usr/bin/env python3
"""Train the paper's CNN on Fashion-MNIST and export it as ONNX.

The network is the Keras `cifar10_cnn` example the paper used, adapted to 28x28x1:
Conv32(same)-Conv32-MaxPool-Conv64(same)-Conv64-MaxPool-Flatten(1600)-Dense512-act-Dense10,
ReLU after every convolution, dropout 0.25/0.25/0.5 during training. `--activation` picks the
hidden dense activation: relu (the paper's model), square (its HE-friendly comparison) or none
(removed: the two dense layers compose linearly).

Input: float32 [1, 1, 28, 28], pixels scaled to [0, 1] (hedged divides raw bytes by 255).
Data: the IDX files of Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist).
Deterministic for a given seed and thread count (torch.use_deterministic_algorithms).

  python3 scripts/train_cnn.py --activation relu --epochs 6 --out models/
Needs: torch, numpy, onnx (pip); writes models/fashion-cnn-<activation>.{onnx,log}.
"""
import argparse
import gzip
import os
import struct
import sys
import time

import numpy as np
import torch
from torch import nn


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        sys.exit(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(data_dir, split):
    prefix = "train" if split == "train" else "t10k"
    def find(kind):
        for name in (f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz",
                     f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"):
            p = os.path.join(data_dir, name)
            if os.path.exists(p):
                return p
        sys.exit(f"no {prefix} {kind} in {data_dir} (apt-get install dataset-fashion-mnist)")
    images = read_idx(find("images")).astype(np.float32)[:, None, :, :] / 255.0
    labels = read_idx(find("labels")).astype(np.int64)
    return torch.from_numpy(images), torch.from_numpy(labels)


class Square(nn.Module):
    def forward(self, x):
        return x * x


def network(activation):
    hidden = {"relu": nn.ReLU(), "square": Square(), "none": nn.Identity()}[activation]
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(1600, 512), hidden, nn.Dropout(0.5),
        nn.Linear(512, 10),
    )


def accuracy(model, x, y):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            correct += (model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item()
    return correct / len(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default="models")
    ap.add_argument("--activation", choices=["relu", "square", "none"], default="relu")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    x_train, y_train = load(args.data, "train")
    x_test, y_test = load(args.data, "test")
    model = network(args.activation)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    loss_fn = nn.CrossEntropyLoss()
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"fashion-cnn-{args.activation}")
    log = open(stem + ".log", "w")
    def say(line):
        print(line)
        log.write(line + "\n")
        log.flush()
    say(f"# {' '.join(sys.argv)}")
    say(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, seed {args.seed}")
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(1, args.epochs + 1):
        model.train()
        started = time.time()
        order = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for i in range(0, len(order), args.batch):
            idx = order[i:i + args.batch]
            opt.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            # The square activation can blow up early on; clipping keeps it trainable.
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        say(f"epoch {epoch}: loss {total / len(order):.4f}, test accuracy "
            f"{accuracy(model, x_test, y_test):.4f} ({time.time() - started:.0f} s)")
    acc = accuracy(model, x_test, y_test)
    say(f"final test accuracy {acc:.4f} on {len(x_test)} images")
    model.eval()
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), stem + ".onnx", input_names=["image"],
                      output_names=["logits"], opset_version=13, dynamo=False)
    say(f"wrote {stem}.onnx")


if __name__ == "__main__":
    main()
