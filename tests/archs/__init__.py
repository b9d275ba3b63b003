"""PyTorch reference definitions of the architectures sparsr imports (one
module each, written from the original repositories, with their parameter
names so that the real state_dicts load strictly), and shared test helpers."""
