"""k-means weight clustering: the 1-D k-means, the centroid-tied fine-tune, the config
fields, that the clustered model quantizes to at most k int8 codes per layer and runs
bit-exact on the golden model, and the compression figure, worked by hand."""
import math
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from hwq.cli import main
from hwq.compiler.frontend import trace
from hwq.compiler.ir import QLayer, QModel
from hwq.compiler.quant.float_model import run_float
from hwq.compiler.quant.pipeline import quantize
from hwq.compiler.quant.cluster import bits_per_weight, cluster_graph, compression, kmeans_1d
from hwq.compiler.quant.report import fake_quant_net, summary_markdown
from hwq.errors import HwqError
from hwq.sim.golden import run_golden

from test_adaquant import ROOT, config_with


@pytest.mark.parametrize("top, fragment", [
    ({"weight_clustering": 1}, "weight_clustering: 1 must be true or false"),
    ({"weight_clustering": True, "weight_clusters": 1}, "weight_clusters: 1 must be in (1, 256]"),
    ({"weight_clustering": True, "weight_clusters": 257}, "weight_clusters: 257 must be in (1, 256]"),
    ({"weight_clustering": True, "weight_clusters": "16"}, "weight_clusters: '16' must be an integer"),
    ({"weight_clustering": True, "weight_cluster_steps": 0}, "weight_cluster_steps: 0 must be in (0, 100000]"),
    ({"weight_clusters": 16}, "weight_clusters: is set but weight_clustering is false"),
    ({"weight_cluster_steps": 10}, "weight_cluster_steps: is set but weight_clustering is false"),
])
def test_config_errors(top, fragment):
    with pytest.raises(HwqError) as info:
        config_with(**top)
    message = str(info.value)
    assert message.startswith("quant config test: ") and "\n" not in message
    assert fragment in message, message


# --- k-means ---------------------------------------------------------------------------

@pytest.mark.parametrize("values, k, centroids, index", [
    # linear start 0, 1.1: means of {0, .1, .2} and {1, 1.1}
    ([0.0, 0.1, 0.2, 1.0, 1.1], 2, [0.1, 1.05], [0, 0, 0, 1, 1]),
    # start 1, 4/3, 5/3, 2: the middle two stay empty and are dropped
    ([1.0, 1.0, 2.0], 4, [1.0, 2.0], [0, 0, 1]),
    ([3.0, 3.0], 4, [3.0], [0, 0]),
])
def test_kmeans_by_hand(values, k, centroids, index):
    c, i = kmeans_1d(np.array(values), k)
    assert c.tolist() == pytest.approx(centroids) and i.tolist() == index


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=1, max_size=200),
       k=st.integers(2, 32))
def test_kmeans_is_a_lloyd_fixed_point(values, k):
    v = np.array(values, np.float64)
    c, i = kmeans_1d(v, k, iters=10_000)
    assert 1 <= len(c) <= k and np.all(np.diff(c) > 0)
    assert sorted(set(i.tolist())) == list(range(len(c)))          # no empty cluster
    assert np.allclose(c, [v[i == j].mean() for j in range(len(c))])  # each centroid its mean
    distance = np.abs(v[:, None] - c[None, :])
    assert np.allclose(distance[np.arange(len(v)), i], distance.min(axis=1))  # nearest centroid


# --- the clustered model -----------------------------------------------------------------

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def tiny():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Tiny()
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
    x = np.random.default_rng(0).uniform(0, 1, size=(96, 1, 8, 8)).astype(np.float32)
    return trace(model, (1, 8, 8), "tiny"), x


def test_weights_tied_to_their_centroids(tiny):
    graph, x = tiny
    k = 4
    clustered = cluster_graph(graph, x, k, steps=30, progress=False)
    untuned = cluster_graph(graph, x, k, steps=1, progress=False)
    for before, after in zip(graph.layers, clustered.layers):
        if before.kind != "conv":
            continue
        assert len(np.unique(after.weight)) <= k and after.bn is None
        # the fine-tune moved the centroids, but the weights that share one are k-means'
        _, index = kmeans_1d(before.weight, k)
        _, shared = np.unique(after.weight, return_inverse=True)
        assert np.array_equal(shared.ravel(), index)
    out = graph.layers[-1].name
    error = lambda g: float(np.mean((run_float(g, x)[out] - run_float(graph, x)[out]) ** 2))  # noqa: E731
    assert error(clustered) < error(untuned)   # distillation from float


def test_clustered_model_quantizes_and_runs_bit_exact(tiny):
    graph, x = tiny
    config = config_with(weight_clustering=True, weight_clusters=4, weight_cluster_steps=20)
    qmodel = quantize(graph, x, config, progress=False)
    convs = [q for q in qmodel.layers if q.kind == "conv"]
    assert len(convs) == 2 and all(len(np.unique(q.weight)) <= 4 for q in convs)
    x_int = qmodel.quantize_input(x)
    golden = run_golden(qmodel, x_int)[qmodel.layers[-1].name].reshape(len(x), -1)
    with torch.no_grad():
        fake = fake_quant_net(graph, qmodel, config)(torch.from_numpy(x)).numpy().reshape(len(x), -1)
    assert np.array_equal(fake, qmodel.dequantize_output(golden))
    rows = compression(qmodel)
    assert [r.layer for r in rows] == ["conv", "fc"] and all(r.index_bits <= 2 for r in rows)
    text = summary_markdown(qmodel, {q.name: 0.0 for q in qmodel.layers})
    assert "weight clustering (k = 4)" in text
    assert f"| total | {54 + 480} | | | " in text and f"{bits_per_weight(rows):.3f}" in text


def test_progress(tiny, capsys):
    graph, x = tiny
    cluster_graph(graph, x, 4, steps=5, progress=True)
    assert "clustering  [####################] 5/5 steps" in capsys.readouterr().err


# --- compression ---------------------------------------------------------------------------

def qmodel_of(*weights):
    layers = [QLayer(name=f"l{i}", kind="conv", input="input", in_shape=(w.shape[1], 1, 1),
                     out_shape=(w.shape[0], 1, 1), f_in=0, f_out=0, weight=w.astype(np.int8))
              for i, w in enumerate(weights)]
    return QModel("m", (1, 1, 1), 0, layers)


def test_compression_by_hand():
    # 100 weights over 16 codes: 4-bit indices (400) + 16 int8 codes (128) = 528 bits, 5.28 a
    # weight; 10 weights over 3 codes: 2-bit indices (20) + 24 = 44 bits, 4.4 a weight;
    # together 572 bits over 110 weights = 5.2, 8 / 5.2 = 1.538x smaller than int8
    a = (np.arange(100) % 16 - 8).reshape(10, 10, 1, 1)
    b = np.array([5, 5, -1, 7, 7, 7, -1, 5, 5, 5]).reshape(2, 5, 1, 1)
    one = np.full((1, 4, 1, 1), 3)   # a single code needs no index: 8 bits for 4 weights
    rows = compression(qmodel_of(a, b, one))
    assert [(r.codes, r.index_bits, r.bits) for r in rows] == [(16, 4, 528), (3, 2, 44), (1, 0, 8)]
    assert [r.bits_per_weight for r in rows] == [5.28, 4.4, 2.0]
    assert rows[0].ratio == pytest.approx(8 / 5.28)
    assert bits_per_weight(rows[:2]) == pytest.approx(5.2)


@settings(max_examples=50, deadline=None)
@given(codes=st.integers(1, 256), extra=st.integers(0, 500), seed=st.integers(0, 2 ** 16))
def test_index_bits_are_the_fewest_that_tell_the_codes_apart(codes, extra, seed):
    rng = np.random.default_rng(seed)
    values = rng.choice(np.arange(-128, 128), codes, replace=False)
    w = np.concatenate([values, rng.choice(values, extra)]).reshape(-1, 1, 1, 1)
    (row,) = compression(qmodel_of(w))
    assert row.codes == codes and row.weights == codes + extra
    assert 2 ** row.index_bits >= codes and (codes == 1 or 2 ** (row.index_bits - 1) < codes)
    assert row.bits == row.weights * row.index_bits + 8 * codes
    assert row.ratio == pytest.approx(8 * row.weights / row.bits)
    assert math.isclose(bits_per_weight([row]), row.bits_per_weight)


def test_quantize_report_prints_compression(tmp_path, capsys):
    (tmp_path / "cl.yaml").write_text((ROOT / "hwq" / "configs" / "quant" / "default.yaml").read_text() +
                                      "weight_clustering: true\nweight_clusters: 8\nweight_cluster_steps: 10\n")
    assert main(["quantize", f"{ROOT / 'hwq' / 'examples' / 'lenet_digits.py'}:LeNet", "--input-shape", "1x8x8",
                 "--calib", "digits", "-o", str(tmp_path / "out"), "--quant-config", str(tmp_path / "cl.yaml"),
                 "-q"]) == 0
    out = capsys.readouterr().out
    assert "weight clustering (k = 8)" in out and re.search(r"\| fc1 \| 2048 \| [1-8] \| [0-3] \| ", out)
