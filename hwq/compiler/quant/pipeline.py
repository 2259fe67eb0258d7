"""Quantization, end to end: a float Graph and calibration data in, a QModel out.

The steps, each its own module: the config's rewrites (rewrite.py: ReLU6 -> ReLU,
cross-layer equalization), weight clustering (cluster.py) when asked, post-training
calibration of every fix position (calibrate.py), and fast finetune (adaquant.py) when
asked. Everything the array cannot run is refused before the first of them.
"""
from __future__ import annotations

import numpy as np

from hwq.compiler.ir import Graph, QModel
from hwq.compiler.quant.adaquant import fast_finetune
from hwq.compiler.quant.calibrate import CALIB_BATCH, calibrate, check_power_of_two, hardware_check
from hwq.compiler.quant.cluster import cluster_graph
from hwq.compiler.quant.config import QuantConfig
from hwq.compiler.quant.rewrite import prepare
from hwq.errors import HwqError


def quantize(graph: Graph, calib: np.ndarray, config: QuantConfig, progress: bool = True,
             hardware: bool = True, batch_size: int = CALIB_BATCH) -> QModel:
    """Quantize `graph` with fix positions calibrated on `calib`, (N, C, H, W) float
    samples of the model's input. `hardware` refuses, up front, settings the array cannot
    run (a LeakyReLU slope out of range); software-only runs pass False. The config's
    weight_clustering clusters the float weights first, its fast_finetune tunes the
    calibrated weights after; both learn from `calib`."""
    calib = np.asarray(calib)
    if calib.ndim != 4 or calib.shape[1:] != tuple(graph.input_shape) or len(calib) == 0:
        raise HwqError(f"model {graph.name}: calibration data has shape {calib.shape}; it must "
                       f"be (N, {', '.join(map(str, graph.input_shape))}) with N >= 1")
    config.check_layers(graph)
    check_power_of_two(config, graph)
    if hardware:
        hardware_check(graph, config)
    user_graph, graph = graph, prepare(graph, config)
    if config.switches["weight_clustering"]:
        graph = cluster_graph(graph, calib, config.options["weight_clusters"],
                              config.options["weight_cluster_steps"], progress)
    qmodel = calibrate(graph, calib, config, batch_size, progress)
    if config.switches["fast_finetune"]:
        qmodel = fast_finetune(user_graph, qmodel, calib, config, config.options["fast_finetune_steps"],
                               progress)
    return qmodel
