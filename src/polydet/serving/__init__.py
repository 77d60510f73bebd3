"""Serving polydet with TorchServe 0.12.0: start/stop a server, REST and gRPC clients, CLI commands.

The TorchServe handler itself lives in ``handlers/polydet_handler.py`` (the transport skin); the request
parsing and response shaping it uses live in :mod:`polydet.serving.handling` so they can be tested
without a server. Nothing here is imported by ``import polydet``.
"""
