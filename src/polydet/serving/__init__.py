"""Serving polydet: the protocol-neutral service and its fronts, TorchServe 0.12.0's start/stop, clients.

:mod:`polydet.serving.service` turns a batch of requests into replies (status + body) over one
Detector, knowing no server; :mod:`polydet.serving.config` is an archive's ``handler:`` section. The
TorchServe handler (``handlers/polydet_handler.py``) is glue over the service. Nothing here is imported
by ``import polydet``.
"""
