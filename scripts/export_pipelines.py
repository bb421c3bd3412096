#!/usr/bin/env python3
"""Models with their pre-processing, as scikit-learn users export them (issue 22): scaler
pipelines, a float64 export, a dense layer followed by a BatchNormalization node (written
with onnx.helper; scripts/export_keras_pipelines.py has Keras' own), and MLPs with tanh,
logistic, leaky ReLU and GELU activations. On scikit-learn's wine
data (13 features from 0.1 to 1,680: raw, they break an 8-bit input scale).

Writes tests/data/pipelines/: NAME.onnx, calibration.txt (100 training vectors) and
NAME.inputs.txt (60 held-out vectors, each labelled with that model's own prediction).
CI reads the committed files; nothing here runs in CI.

    pip install scikit-learn skl2onnx onnx && python3 scripts/export_pipelines.py
"""
import os

import numpy as np
import onnx
import sklearn
import skl2onnx
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.datasets import load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "pipelines")


def vec(v):
    return ",".join(f"{a:.6g}" for a in v)


def write(name, onnx_model, predicted, x):
    with open(os.path.join(OUT, f"{name}.onnx"), "wb") as f:
        f.write(onnx_model.SerializeToString())
    with open(os.path.join(OUT, f"{name}.inputs.txt"), "w") as f:
        f.write(f"# predictions of scikit-learn {sklearn.__version__}, skl2onnx {skl2onnx.__version__}\n")
        f.write("".join(f"{int(p)}: {vec(v)}\n" for p, v in zip(predicted, x)))


def scaled_relu_mlp(x_train, y_train):
    """A StandardScaler + ReLU MLP's float32 weights w1, b1, w2, b2, the scaler folded into the
    first layer."""
    scaler = StandardScaler().fit(x_train)
    mlp = MLPClassifier((16,), max_iter=3000, random_state=0).fit(scaler.transform(x_train), y_train)
    w1 = (mlp.coefs_[0] / scaler.scale_[:, None]).astype(np.float32)
    b1 = (mlp.intercepts_[0] - (scaler.mean_ / scaler.scale_) @ mlp.coefs_[0]).astype(np.float32)
    return w1, b1, mlp.coefs_[1].astype(np.float32), mlp.intercepts_[1].astype(np.float32)


def batchnorm_mlp(x_train, y_train):
    """Dense → BatchNormalization → ReLU → Dense, the statistics from the training data."""
    rng = np.random.default_rng(5)
    # The scaler folded into the first layer, then a batch norm undone that the graph redoes.
    w1, b1, w2, b2 = scaled_relu_mlp(x_train, y_train)
    gamma = rng.uniform(0.5, 2.0, 16).astype(np.float32)
    beta = rng.normal(0, 0.5, 16).astype(np.float32)
    mean = rng.normal(0, 1.0, 16).astype(np.float32)
    var = rng.uniform(0.5, 2.0, 16).astype(np.float32)
    eps = 1e-3
    k = gamma / np.sqrt(var + eps)
    # BN(W·x + b) = k·(W·x + b − mean) + beta must equal the trained pre-activation.
    w1_bn = (w1 / k).astype(np.float32)
    b1_bn = ((b1 - beta) / k + mean).astype(np.float32)
    init = [numpy_helper.from_array(a, n) for a, n in [
        (w1_bn, "w1"), (b1_bn, "b1"), (gamma, "gamma"), (beta, "beta"), (mean, "mean"),
        (var, "var"), (w2, "w2"), (b2, "b2")]]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="dense"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="dense_bias"),
        helper.make_node("BatchNormalization", ["h1", "gamma", "beta", "mean", "var"], ["h2"],
                         name="batch_norm", epsilon=eps),
        helper.make_node("Relu", ["h2"], ["h3"], name="relu"),
        helper.make_node("MatMul", ["h3", "w2"], ["o0"], name="dense_1"),
        helper.make_node("Add", ["o0", "b2"], ["scores"], name="dense_1_bias"),
        helper.make_node("Softmax", ["scores"], ["probabilities"], name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "dense_batchnorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, x_train.shape[1]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, len(b2)])],
        init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)

    def predict(x):
        h = x @ w1_bn + b1_bn
        h = k * (h - mean) + beta
        return np.argmax(np.maximum(h, 0) @ w2 + b2, axis=1)

    return model, predict


def activation_mlp(x_train, y_train, op, attrs, f):
    """A scaler + ReLU MLP's weights (the scaler folded in) with another activation `op`
    between the layers, as PyTorch and Keras write LeakyRelu and Gelu: the graph's own forward
    pass `f` gives the predictions (scikit-learn trains neither)."""
    w1, b1, w2, b2 = scaled_relu_mlp(x_train, y_train)
    init = [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2")]]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="dense"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="dense_bias"),
        helper.make_node(op, ["h1"], ["h2"], name="activation", **attrs),
        helper.make_node("MatMul", ["h2", "w2"], ["o0"], name="dense_1"),
        helper.make_node("Add", ["o0", "b2"], ["scores"], name="dense_1_bias"),
        helper.make_node("Softmax", ["scores"], ["probabilities"], name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, f"{op.lower()}_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, x_train.shape[1]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, len(b2)])],
        init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.checker.check_model(model)

    def predict(x):
        return np.argmax(f(x.astype(np.float64) @ w1 + b1) @ w2 + b2, axis=1)

    return model, predict


def torch_gelu_mlp(x_train, y_train):
    """The GELU MLP as PyTorch exports nn.GELU() below opset 20 (torch/onnx/symbolic_opset9.py):
    x·(1 + erf(x / √2))·½ in five nodes, its scalars as Constant nodes, opset 17."""
    w1, b1, w2, b2 = scaled_relu_mlp(x_train, y_train)
    init = [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2")]]

    def scalar(name, value):
        return helper.make_node("Constant", [], [name], name=name,
                                value=numpy_helper.from_array(np.array(value, dtype=np.float32)))

    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="/fc1/MatMul"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="/fc1/Add"),
        scalar("sqrt2", np.sqrt(2.0)),
        helper.make_node("Div", ["h1", "sqrt2"], ["g0"], name="/act/Div"),
        helper.make_node("Erf", ["g0"], ["g1"], name="/act/Erf"),
        scalar("one", 1.0),
        helper.make_node("Add", ["g1", "one"], ["g2"], name="/act/Add"),
        helper.make_node("Mul", ["h1", "g2"], ["g3"], name="/act/Mul"),
        scalar("half", 0.5),
        helper.make_node("Mul", ["g3", "half"], ["h2"], name="/act/Mul_1"),
        helper.make_node("MatMul", ["h2", "w2"], ["o0"], name="/fc2/MatMul"),
        helper.make_node("Add", ["o0", "b2"], ["scores"], name="/fc2/Add"),
    ]
    graph = helper.make_graph(
        nodes, "torch_gelu_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, x_train.shape[1]])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, len(b2)])],
        init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    from math import erf
    gelu_f = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))

    def predict(x):
        return np.argmax(gelu_f(x.astype(np.float64) @ w1 + b1) @ w2 + b2, axis=1)

    return model, predict


def activations(x32, y, train, test, options):
    """MLPs with the activations hedge bootstraps besides ReLU: tanh and logistic pipelines as
    scikit-learn exports them, leaky ReLU and GELU as PyTorch and Keras write them."""
    for act in ["tanh", "logistic"]:
        mlp = make_pipeline(StandardScaler(),
                            MLPClassifier((16,), activation=act, max_iter=3000, random_state=0))
        mlp.fit(x32[train], y[train])
        write(f"scaler-mlp-{act}", to_onnx(mlp, x32[:1], options={id(mlp.steps[-1][1]): options},
                                          target_opset=17), mlp.predict(x32[test]), x32[test])
    leaky, predict = activation_mlp(x32[train], y[train], "LeakyRelu", {"alpha": 0.1},
                                    lambda h: np.where(h >= 0, h, 0.1 * h))
    write("leaky-mlp", leaky, predict(x32[test]), x32[test])
    from math import erf
    gelu_f = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))
    gelu, predict = activation_mlp(x32[train], y[train], "Gelu", {}, gelu_f)
    write("gelu-mlp", gelu, predict(x32[test]), x32[test])
    torch_gelu, predict = torch_gelu_mlp(x32[train], y[train])
    write("torch-gelu-mlp", torch_gelu, predict(x32[test]), x32[test])


def main():
    os.makedirs(OUT, exist_ok=True)
    x, y = load_wine(return_X_y=True)
    order = np.random.default_rng(4).permutation(len(x))
    train, test = order[:118], order[118:]
    x32 = x.astype(np.float32)
    with open(os.path.join(OUT, "calibration.txt"), "w") as f:
        f.write("".join(vec(v) + "\n" for v in x32[train[:100]]))
    options = {"zipmap": False}

    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(x32[train], y[train])
    write("scaler-logistic", to_onnx(lr, x32[:1], options={id(lr.steps[-1][1]): options},
                                     target_opset=17), lr.predict(x32[test]), x32[test])

    mlp = make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=3000, random_state=0))
    mlp.fit(x32[train], y[train])
    write("scaler-mlp", to_onnx(mlp, x32[:1], options={id(mlp.steps[-1][1]): options},
                                target_opset=17), mlp.predict(x32[test]), x32[test])

    # float64 all the way, as to_onnx(clf, x[:1]) gives on scikit-learn's usual arrays.
    mlp64 = make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=3000, random_state=0))
    mlp64.fit(x[train], y[train])
    write("float64-scaler-mlp", to_onnx(mlp64, x[:1], options={id(mlp64.steps[-1][1]): options},
                                        target_opset=17), mlp64.predict(x[test]), x[test])

    activations(x32, y, train, test, options)

    # A Normalizer in front (each input scaled by its own norm): L2 before a logistic
    # regression, MAX (the largest |x|) after a StandardScaler before an MLP, L1 before an MLP.
    for name, steps in [
        ("normalizer-logistic", [Normalizer("l2"), LogisticRegression(max_iter=3000)]),
        ("scaler-normalizer-mlp", [StandardScaler(), Normalizer("max"),
                                   MLPClassifier((16,), max_iter=3000, random_state=0)]),
        ("normalizer-l1-mlp", [StandardScaler(), Normalizer("l1"),
                               MLPClassifier((16,), max_iter=3000, random_state=0)]),
    ]:
        model = make_pipeline(*steps).fit(x32[train], y[train])
        write(name, to_onnx(model, x32[:1], options={id(model.steps[-1][1]): options},
                            target_opset={"": 17, "ai.onnx.ml": 3}),
              model.predict(x32[test]), x32[test])

    bn, predict = batchnorm_mlp(x32[train], y[train])
    write("dense-batchnorm", bn, predict(x32[test]), x32[test])

    # A random forest: no dense classifier, refused with what to export instead.
    forest = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0)
    forest.fit(x32[train], y[train])
    with open(os.path.join(OUT, "random-forest.onnx"), "wb") as f:
        f.write(to_onnx(forest, x32[:1], options={id(forest): options},
                        target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString())

    # A tanh MLP on features standardised beforehand (its own calibration file).
    scaler = StandardScaler().fit(x32[train])
    xs = scaler.transform(x32).astype(np.float32)
    with open(os.path.join(OUT, "tanh-mlp.calibration.txt"), "w") as f:
        f.write("".join(vec(v) + "\n" for v in xs[train[:100]]))
    tanh = MLPClassifier((16,), activation="tanh", max_iter=3000, random_state=0)
    tanh.fit(xs[train], y[train])
    write("tanh-mlp", to_onnx(tanh, xs[:1], options={id(tanh): options}, target_opset=17),
          tanh.predict(xs[test]), xs[test])


if __name__ == "__main__":
    main()
