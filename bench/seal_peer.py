#!/usr/bin/env python3
"""The SEAL peer of `hedge bench --variant act --features plain` (issue 24): the paper's
design (Gomez et al.: the model encrypted with SEAL, the features plaintext on the edge) for
the 2304→512→10 classifier with its square activation, in TenSEAL's BFV, one thread,
N = 8192 — what hedge's bootstrapped `act` is measured against on the same host, in the same
run.

  pip install tenseal==0.3.18 numpy
  python3 bench/seal_peer.py [--inputs 3] [--shape 2304,512,10] [--json]

The backend encrypts the model: W1 column by column (one ciphertext per input feature holding
that feature's weight into each of the 512 hidden units, batched), b1, each row of W2 and b2.
The edge computes the hidden layer with no rotation at all, h = b1 + Σ_i x_i·Enc(W1[:, i])
(plaintext-scalar products and additions: 2,304 of each), squares it (one ciphertext
multiplication and relinearisation for all 512 units), and each score as Enc(W2[c]) ⊙ h²
summed over the slots (a ciphertext multiplication and a rotate-and-add sum) plus b2[c]; the
backend decrypts the ten scores. BFV is exact modulo the plaintext modulus t, so the result is
checked against the same integer network computed modulo t (values this large wrap in Z_t; a
deployment would scale them down — the time is the same). One thread: n_threads = 1.

Prints per-stage seconds per inference and, with --json, one JSON line at the end.
"""
import argparse
import json
import statistics
import time

import numpy as np
import tenseal as ts

N = 8192
# A 20-bit prime ≡ 1 (mod 2N) for batching, SEAL's usual choice at N = 8192: each plaintext
# product multiplies the noise by ≈ N·t, and the dot products and the square must fit the
# 218-bit coefficient modulus's budget.
PLAIN_MODULUS = 1032193


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", type=int, default=3)
    ap.add_argument("--shape", default="2304,512,10")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    d_in, hidden, out = (int(v) for v in a.shape.split(","))
    rng = np.random.default_rng(1)
    # The shape and widths of hedge's synthetic classifier: 8-bit inputs, 5-bit weights.
    w1 = rng.integers(-15, 16, size=(hidden, d_in))
    b1 = rng.integers(-15, 16, size=hidden)
    w2 = rng.integers(-15, 16, size=(out, hidden))
    b2 = rng.integers(-15, 16, size=out)

    t0 = time.perf_counter()
    ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=N, plain_modulus=PLAIN_MODULUS,
                     n_threads=1)
    ctx.generate_galois_keys()
    ctx.generate_relin_keys()
    keygen = time.perf_counter() - t0

    # The backend encrypts the model once (not part of the edge's time).
    t0 = time.perf_counter()
    enc_cols = [ts.bfv_vector(ctx, w1[:, i].tolist()) for i in range(d_in)]
    enc_b1 = ts.bfv_vector(ctx, b1.tolist())
    enc_w2 = [ts.bfv_vector(ctx, w2[c].tolist()) for c in range(out)]
    enc_b2 = [ts.bfv_vector(ctx, [int(b2[c])]) for c in range(out)]
    encrypt_model = time.perf_counter() - t0

    stages = {"layer1": [], "square": [], "layer2": [], "decrypt": [], "total": []}
    correct = 0
    t = PLAIN_MODULUS
    for i in range(a.inputs):
        x = rng.integers(0, 256, size=d_in)
        start = time.perf_counter()
        h = enc_b1.copy()
        for xi, col in zip(x.tolist(), enc_cols):
            if xi:  # a product by 0 is a transparent ciphertext, which SEAL refuses
                h += col * xi
        t2 = time.perf_counter()
        h2 = h * h
        t3 = time.perf_counter()
        scores = [(enc_w2[c] * h2).sum() + enc_b2[c] for c in range(out)]
        t4 = time.perf_counter()
        got = [s.decrypt()[0] for s in scores]
        t5 = time.perf_counter()
        for k, v in zip(stages, [t2 - start, t3 - t2, t4 - t3, t5 - t4, t5 - start]):
            stages[k].append(v)
        # The same integer network modulo t (Python integers: no overflow).
        hid = [int(np.dot(w1[j].astype(object), x.astype(object))) + int(b1[j])
               for j in range(hidden)]
        want = [(sum(int(w2[c, j]) * hid[j] * hid[j] for j in range(hidden)) + int(b2[c])) % t
                for c in range(out)]
        got_mod = [v % t for v in got]
        correct += got_mod == want
        print(f"input {i}: {t5 - start:.2f} s (layer 1 {t2 - start:.2f}, square {t3 - t2:.3f}, "
              f"layer 2 {t4 - t3:.2f}, decrypt {t5 - t4:.3f}); "
              f"{'exact' if got_mod == want else 'WRONG'} modulo t", flush=True)
    summary = {
        "peer": "tenseal-bfv",
        "tenseal": ts.__version__,
        "poly_modulus_degree": N,
        "plain_modulus_bits": PLAIN_MODULUS.bit_length(),
        "threads": 1,
        "shape": [d_in, hidden, out],
        "inputs": a.inputs,
        "keygen_s": keygen,
        "encrypt_model_s": encrypt_model,
        "exact": correct,
    }
    summary.update({f"{k}_s": statistics.median(v) for k, v in stages.items()})
    if a.json:
        print(json.dumps(summary))
    else:
        print(f"median per inference: {summary['total_s']:.2f} s "
              f"({correct} of {a.inputs} exact modulo t; keygen {keygen:.1f} s, model "
              f"encryption {encrypt_model:.1f} s)")
    if correct != a.inputs:
        raise SystemExit("the peer computed something else than the network")


if __name__ == "__main__":
    main()
