"""Open Inference Protocol fronts other than TorchServe: KServe (``kserve.py``) and Triton through PyTriton
(``triton.py``). Each runs in its own isolated venv (``polydet.envs``, specs in ``launch.py``) and is a few
dozen lines of glue over ``polydet.serving.service.DetectionService`` and the tensor layout of
``polydet.serving.oip``. Nothing here is imported by the library.
"""
