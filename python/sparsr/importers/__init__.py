"""Importers: PyTorch state_dicts (by architecture) and ONNX files -> sparsr graphs.

Only ``convert`` needs PyTorch (to read a .pth) or onnx (to read an ONNX file);
both are imported when called, never by ``import sparsr``.
"""
