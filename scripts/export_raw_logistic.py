#!/usr/bin/env python3
"""A logistic regression on scikit-learn's breast-cancer features as they come (30 features
spanning four orders of magnitude, no scaler), exported as a new user would: the model that
made `hedge protect` silently wrong (issue 22). Writes tests/data/raw-features/: model.onnx,
calibration.txt (200 training vectors), inputs.txt (100 held-out vectors labelled with
scikit-learn's own predict()). CI reads the committed files; nothing here runs in CI.

    pip install scikit-learn skl2onnx onnx && python3 scripts/export_raw_logistic.py
"""
import os

import numpy as np
import sklearn
import skl2onnx
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "raw-features")


def vec(v):
    return ",".join(f"{a:.6g}" for a in v)


def main():
    os.makedirs(OUT, exist_ok=True)
    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    rng = np.random.default_rng(3)
    order = rng.permutation(len(x))
    train, test = order[:400], order[400:500]
    clf = LogisticRegression(max_iter=5000).fit(x[train], y[train])
    onnx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    with open(os.path.join(OUT, "model.onnx"), "wb") as f:
        f.write(onnx.SerializeToString())
    with open(os.path.join(OUT, "calibration.txt"), "w") as f:
        f.write("".join(vec(v) + "\n" for v in x[train[:200]]))
    predicted = clf.predict(x[test])
    with open(os.path.join(OUT, "inputs.txt"), "w") as f:
        f.write(f"# predict() of scikit-learn {sklearn.__version__}, skl2onnx {skl2onnx.__version__}\n")
        f.write("".join(f"{p}: {vec(v)}\n" for p, v in zip(predicted, x[test])))


if __name__ == "__main__":
    main()
