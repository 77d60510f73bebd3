"""Training data: the synthetic main-area generator (``synth``), label files (``labels``) and the
training dataset (``dataset``). Import the submodules directly; nothing heavy is imported here."""
