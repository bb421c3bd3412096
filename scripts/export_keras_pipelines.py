#!/usr/bin/env python3
"""Keras models on scikit-learn's wine data, exported by tf2onnx as a Keras user exports them
(issue 22): a Normalization layer in front (Sub and Mul by constants), Dense →
BatchNormalization → ReLU → Dense (tf2onnx writes the batch norm as a Mul and an Add after the
dense layer), and a Dense layer with GELU's tanh form (eight elementwise nodes, Pow for x³).
Same split and calibration vectors as scripts/export_pipelines.py.

Writes tests/data/pipelines/: keras-batchnorm and keras-gelu-tanh (NAME.onnx, and
NAME.inputs.txt: the 60 held-out vectors, each labelled with Keras' own prediction).
CI reads the committed files; nothing here runs in CI.

    python3 -m venv venv && venv/bin/pip install "tensorflow-cpu==2.15.1" "tf2onnx==1.16.1" \
        "numpy<2" "onnx==1.15.0" scikit-learn
    venv/bin/python scripts/export_keras_pipelines.py
"""
import os

import numpy as np
from sklearn.datasets import load_wine

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "pipelines")


def vec(v):
    return ",".join(f"{a:.6g}" for a in v)


def export(name, model, x_test):
    spec = (tf.TensorSpec((None, x_test.shape[1]), tf.float32, name="x"),)
    onx, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    with open(os.path.join(OUT, f"{name}.onnx"), "wb") as f:
        f.write(onx.SerializeToString())
    predicted = model.predict(x_test, verbose=0).argmax(1)
    with open(os.path.join(OUT, f"{name}.inputs.txt"), "w") as f:
        f.write(f"# predictions of tensorflow {tf.__version__}, tf2onnx {tf2onnx.__version__}\n")
        f.write("".join(f"{int(p)}: {vec(v)}\n" for p, v in zip(predicted, x_test)))
    print(name, "ops:", " ".join(n.op_type for n in onx.graph.node))


def main():
    x, y = load_wine(return_X_y=True)
    order = np.random.default_rng(4).permutation(len(x))
    train, test = order[:118], order[118:]
    x32 = x.astype(np.float32)

    def trained(*layers):
        tf.keras.utils.set_random_seed(0)
        norm = tf.keras.layers.Normalization()
        norm.adapt(x32[train])
        model = tf.keras.Sequential([tf.keras.Input((13,)), norm, *layers])
        model.compile(tf.keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.fit(x32[train], y[train], epochs=200, batch_size=32, verbose=0)
        print("held-out accuracy", model.evaluate(x32[test], y[test], verbose=0)[1])
        return model

    export("keras-batchnorm", trained(
        tf.keras.layers.Dense(16),
        tf.keras.layers.BatchNormalization(),
        tf.keras.layers.ReLU(),
        tf.keras.layers.Dense(3, activation="softmax"),
    ), x32[test])
    export("keras-gelu-tanh", trained(
        tf.keras.layers.Dense(16, activation=lambda t: tf.keras.activations.gelu(t, approximate=True)),
        tf.keras.layers.Dense(3, activation="softmax"),
    ), x32[test])


if __name__ == "__main__":
    main()
