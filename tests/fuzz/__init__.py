"""Fuzzing sparsr's file readers: the checkpoint loader, the ONNX importer and
the PyTorch weights importer.

    python -m tests.fuzz --seconds 120 --seed 1      # from the repository root
    python -m tests.fuzz --inputs 100000 --seed 7 --seconds 36000
    python -m tests.fuzz --replay tests/fuzz/corpus/checkpoint/*.pt

Seeds are tiny networks made in-process (seeds.py); mutators.py changes them
(bytes, truncations, header JSON, dtypes, offsets, CRC-valid data, ONNX
protobuf fields, zip members and pickles); engine.py runs each input in a
forked worker under a watchdog; targets.py says what running one means.
Every input that ever made sparsr misbehave is kept in corpus/ and run by
tests/test_fuzz_corpus.py.
"""
