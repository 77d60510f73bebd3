"""The seed handbook's optimisation chain past export: INT8 quantization with an accuracy and speed report
(``polydet quantize``, optimize/quantize.py + report.py) and layerwise debugging (``polydet debug``,
optimize/debug.py). The graph passes and the INT8 exporter themselves live in polydet.export."""
