"""Architectures converted from PyTorch state_dicts: one module each, with
NAME, detect(sd), scales(hyper) and build(sd, hyper, scale)."""

from . import imdn, rfdn, rlfn, span

ARCHITECTURES = [rfdn, rlfn, imdn, span]
