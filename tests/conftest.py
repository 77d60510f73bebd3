import os

# Keep torch from oversubscribing the 2-core CI machine when tests run next to a TorchServe.
os.environ.setdefault("OMP_NUM_THREADS", "2")
