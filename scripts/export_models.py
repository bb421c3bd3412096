#!/usr/bin/env python3
"""Small classifiers exported to ONNX by the common ML tools, as a new user would make them,
with the reference outputs of each tool's own runtime on a committed input set.

Writes tests/data/exporters/: the ONNX files, calibration.txt (vectors), inputs.txt
(labelled vectors `label: v1,...`), and reference.json (per model: the exporter and its
version, the class labels, and per input the predicted label and the scores the tool's own
runtime gives). CI reads the committed files; nothing here runs in CI.

    python3 -m venv venv && venv/bin/pip install torch onnxscript tensorflow-cpu tf2onnx scikit-learn skl2onnx onnx
    venv/bin/python scripts/export_models.py
"""
import json
import os
import sys

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "exporters")
FEATURES, HIDDEN, CLASSES = 16, 12, 4
LABELS = ["circle", "square", "star", "wave"]


def dataset(seed, n):
    """Four Gaussian clusters in 16 dimensions, a little overlap (so near-ties exist)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(0, 1.0, (CLASSES, FEATURES))
    y = rng.integers(0, CLASSES, n)
    x = centres[y] + rng.normal(0, 0.8, (n, FEATURES))
    return x.astype(np.float32), y


def vec(v):
    return ",".join(f"{a:.6g}" for a in v)


def main():
    os.makedirs(OUT, exist_ok=True)
    x_train, y_train = dataset(1, 2000)
    x_cal, _ = dataset(2, 300)
    x_test, y_test = dataset(3, 60)
    with open(os.path.join(OUT, "calibration.txt"), "w") as f:
        f.writelines(vec(v) + "\n" for v in x_cal)
    with open(os.path.join(OUT, "inputs.txt"), "w") as f:
        # hedge reads `label: values` with the label as a class index (LABELS is sorted, the
        # order of scikit-learn's classes_).
        f.writelines(f"{l}: {vec(v)}\n" for v, l in zip(x_test, y_test))
    reference = {}

    # --- scikit-learn (skl2onnx) ---
    import sklearn
    import skl2onnx
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import LinearSVC

    y_names = np.array(LABELS)[y_train]
    sk = {
        "sklearn-mlp-relu": MLPClassifier((HIDDEN,), activation="relu", max_iter=400, random_state=0),
        "sklearn-mlp-identity": MLPClassifier((HIDDEN,), activation="identity", max_iter=400, random_state=0),
        "sklearn-logistic": LogisticRegression(max_iter=500),
        "sklearn-linearsvc": LinearSVC(),
        "sklearn-sgd": SGDClassifier(random_state=0),
        # Two classes: one score row, the binary form of LinearClassifier.
        "sklearn-logistic-binary": LogisticRegression(max_iter=500),
    }
    for name, clf in sk.items():
        clf.fit(x_train, np.where(y_names == "circle", "circle", "other") if "binary" in name else y_names)
        variants = {name: {}}
        if name == "sklearn-mlp-relu":
            variants[name + "-nozipmap"] = {"zipmap": False}
        for file, options in variants.items():
            onx = to_onnx(clf, x_train[:1], options={id(clf): options} if options else None,
                          target_opset={"": 17, "ai.onnx.ml": 3})
            with open(os.path.join(OUT, file + ".onnx"), "wb") as f:
                f.write(onx.SerializeToString())
            scores = (clf.predict_proba(x_test) if hasattr(clf, "predict_proba")
                      else clf.decision_function(x_test))
            reference[file] = {
                "exporter": f"scikit-learn {sklearn.__version__}, skl2onnx {skl2onnx.__version__}",
                "labels": [str(c) for c in clf.classes_],
                "predicted": [str(p) for p in clf.predict(x_test)],
                "scores": np.asarray(scores).tolist(),
            }

    # --- PyTorch (torch.onnx.export) ---
    import torch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(),
                              torch.nn.Linear(HIDDEN, CLASSES))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    net.eval()
    # As people deploy it: probabilities out, a symbolic batch.
    deployed = torch.nn.Sequential(net, torch.nn.Softmax(dim=1))
    # The default exporter (torch.export, needs onnxscript) and the older TorchScript one.
    example = (torch.from_numpy(x_test[:2]),)
    torch.onnx.export(deployed, example, os.path.join(OUT, "torch-mlp-dynamo.onnx"),
                      input_names=["x"], output_names=["probabilities"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.onnx.export(deployed, example, os.path.join(OUT, "torch-mlp.onnx"), input_names=["x"],
                      output_names=["probabilities"], dynamic_axes={"x": {0: "batch"}},
                      dynamo=False)
    with torch.no_grad():
        probs = deployed(torch.from_numpy(x_test)).numpy()
    for file, how in [("torch-mlp-dynamo", "torch.export exporter, the default"),
                      ("torch-mlp", "TorchScript exporter, dynamo=False")]:
        reference[file] = {
            "exporter": f"torch {torch.__version__} (torch.onnx.export, {how})",
            "labels": None,
            "predicted": [int(p) for p in probs.argmax(1)],
            "scores": probs.tolist(),
        }

    # --- Keras / TensorFlow (tf2onnx) ---
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf2onnx
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((FEATURES,), name="features"),
        tf.keras.layers.Dense(HIDDEN, activation="relu"),
        tf.keras.layers.Dense(CLASSES, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=30, verbose=0)
    spec = (tf.TensorSpec((None, FEATURES), tf.float32, name="features"),)
    model.output_names = ["probabilities"]
    onx, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    with open(os.path.join(OUT, "keras-mlp.onnx"), "wb") as f:
        f.write(onx.SerializeToString())
    probs = model.predict(x_test, verbose=0)
    reference["keras-mlp"] = {
        "exporter": f"tensorflow {tf.__version__}, tf2onnx {tf2onnx.__version__}",
        "labels": None,
        "predicted": [int(p) for p in probs.argmax(1)],
        "scores": probs.tolist(),
    }

    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")
    print("wrote", sorted(reference), file=sys.stderr)


if __name__ == "__main__":
    main()
