"""facelab: the pure-PyTorch library (nets, losses, ops, io). It never imports Lightning."""

__version__ = "0.1.0"
