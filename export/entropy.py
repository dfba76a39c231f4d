"""The entropy (KL-divergence) calibration threshold, as ONNX Runtime computes it, without its loops.

``--calib-method entropy`` drives ONNX Runtime's histogram calibrator with 2048 bins (TensorRT's
entropy calibrator's size). Its threshold search (``HistogramCollector.get_entropy_threshold``)
tries ~1000 candidate ranges per tensor and, for each, merges and expands the 128 quantised bins in
Python loops with the built-in ``sum`` over NumPy slices: about 0.75 s per tensor on the 2-core dev
box, so minutes for a model of a few hundred tensors. ``entropy_threshold`` does the same arithmetic
with array operations (reshape-and-sum merging, ``np.repeat`` expansion, prefix sums for the
outliers) and calls ONNX Runtime's own ``smooth_distribution`` and ``entropy``, so every candidate's
divergence, and the chosen threshold, are ONNX Runtime's. ``install`` puts it on a collector.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def entropy_threshold(histogram: tuple[Any, ...], num_quantized_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime's ``get_entropy_threshold(histogram, num_quantized_bins)``, the same result.

    ``histogram`` is ONNX Runtime's per-tensor tuple (counts, edges, min, max, ...)."""
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    hist, edges = histogram[0], histogram[1]
    num_bins = hist.size
    zero = num_bins // 2
    half_q = num_quantized_bins // 2
    dtype = edges.dtype
    before = np.concatenate(([0], np.cumsum(hist)))  # before[k] = sum(hist[:k]), exact in integers
    total = before[-1]
    candidates = range(half_q, zero + 1)
    kl = np.zeros(len(candidates))
    for j, i in enumerate(candidates):
        start, end = zero - i, min(zero + i + 1, num_bins)
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += before[start]  # left outliers folded into the first bin
        p[-1] += total - before[end]  # right outliers into the last
        nonzero = p != 0
        merged = sliced.size // num_quantized_bins
        body = num_quantized_bins * merged
        quantized = sliced[:body].reshape(num_quantized_bins, merged).sum(axis=1)
        quantized[-1] += sliced[body:].sum()
        norm = nonzero[:body].reshape(num_quantized_bins, merged).sum(axis=1)
        q = np.zeros(p.size, dtype=np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_bin = np.where(norm != 0, quantized / norm, 0.0)
        q[:body] = np.repeat(per_bin, merged)  # assigned into int64, as ONNX Runtime does (truncated)
        ps, qs = smooth_distribution(p), smooth_distribution(q)
        kl[j] = np.inf if ps is None or qs is None else np.array(entropy(ps, qs), dtype=dtype)
    best = candidates[int(np.argmin(kl))]
    lo, hi = edges[zero - best], edges[min(zero + best + 1, num_bins)]
    min_value, max_value = histogram[2], histogram[3]
    return (min_value if lo < min_value else lo), (max_value if hi > max_value else hi)


def install(collector: Any) -> None:
    """Make an ONNX Runtime ``HistogramCollector`` search its entropy thresholds with ``entropy_threshold``."""
    collector.get_entropy_threshold = entropy_threshold
