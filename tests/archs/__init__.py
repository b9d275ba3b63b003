"""PyTorch reference definitions of the architectures sparsr imports, with the
parameter names of the authors' state_dicts, and helpers to run them."""
