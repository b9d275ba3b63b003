"""The checkpoint file: round trip, and a clear error for every kind of bad file."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest

from sparsr import checkpoint
from sparsr.errors import CheckpointError, SparsrError


def _sample(tmp_path):
    path = tmp_path / "m.pt"
    tensors = {"a": np.arange(12, dtype=np.float32).reshape(3, 4),
               "b": np.array([1, -2, 3], dtype=np.int32),
               "empty": np.zeros((0, 5), dtype=np.float32)}
    checkpoint.save(path, {"architecture": "test", "scale": 2}, tensors, {"note": "x"})
    return path, tensors


def test_round_trip(tmp_path):
    path, tensors = _sample(tmp_path)
    model, loaded, meta = checkpoint.load(path)
    assert model == {"architecture": "test", "scale": 2}
    assert meta == {"note": "x"}
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        np.testing.assert_array_equal(loaded[k], v)
    assert loaded["a"].flags.writeable  # a private copy, not a view of the file


def test_saved_file_has_the_usual_permissions(tmp_path):
    path, _ = _sample(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_save_refuses_unstorable_dtype_and_leaves_nothing(tmp_path):
    path = tmp_path / "m.pt"
    with pytest.raises(CheckpointError, match="dtype"):
        checkpoint.save(path, {}, {"x": np.array(["a"], dtype=object)})
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic_over_an_existing_file(tmp_path):
    path, _ = _sample(tmp_path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError):
        checkpoint.save(path, {}, {"x": np.array([object()], dtype=object)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"hello world, not a model at all", "unknown content"),
    (b"PK\x03\x04" + b"\0" * 40, "ZIP archive"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image"),
    (b"SPARS", "truncated"),
])
def test_foreign_files(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        checkpoint.load(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="directory"):
        checkpoint.load(tmp_path)


class _Exploit:
    """A pickle that would create a file if anything unpickled it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_calls_a_function_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": _Exploit(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match="pickle"):
        checkpoint.load(path)
    assert not marker.exists()
    import sparsr
    with pytest.raises(SparsrError, match="pickle"):
        sparsr.load(path)
    assert not marker.exists()


def test_every_truncation_is_detected(tmp_path):
    path, _ = _sample(tmp_path)
    raw = path.read_bytes()
    cut = tmp_path / "cut.pt"
    for n in sorted({1, 7, 8, 23, 24, 30, len(raw) // 2, len(raw) - 64, len(raw) - 1}):
        cut.write_bytes(raw[:n])
        with pytest.raises(CheckpointError, match="truncated|corrupted|header"):
            checkpoint.load(cut)


def test_trailing_garbage_is_detected(tmp_path):
    path, _ = _sample(tmp_path)
    path.write_bytes(path.read_bytes() + b"junk")
    with pytest.raises(CheckpointError, match="unexpected bytes"):
        checkpoint.load(path)


def test_flipped_data_byte_fails_the_checksum(tmp_path):
    path, _ = _sample(tmp_path)
    raw = bytearray(path.read_bytes())
    (hlen,) = struct.unpack_from("<Q", raw, 16)
    data_start = (24 + hlen + 63) // 64 * 64
    header = json.loads(raw[24:24 + hlen])
    raw[data_start + header["tensors"]["b"]["offset"] + 5] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="'b' is corrupted"):
        checkpoint.load(path)


def test_corrupted_header(tmp_path):
    path, _ = _sample(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[30] = ord("\x01")  # inside the JSON text
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="header"):
        checkpoint.load(path)


def test_future_version_is_named(tmp_path):
    path, _ = _sample(tmp_path)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 8, 99)
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="version 99"):
        checkpoint.load(path)


def test_tensor_outside_data_section(tmp_path):
    path = tmp_path / "m.pt"
    checkpoint.save(path, {}, {"a": np.ones(4, np.float32)})
    raw = path.read_bytes()
    (hlen,) = struct.unpack_from("<Q", raw, 16)
    header = raw[24:24 + hlen].replace(b'"offset": 0', b'"offset": 9')
    assert len(header) == hlen
    path.write_bytes(raw[:24] + header + raw[24 + hlen:])
    with pytest.raises(CheckpointError, match="outside the data section"):
        checkpoint.load(path)


def test_unknown_architecture(tmp_path):
    import sparsr
    path = tmp_path / "m.pt"
    checkpoint.save(path, {"architecture": "nope"}, {})
    with pytest.raises(CheckpointError, match="not a graph checkpoint"):
        sparsr.load(path)


def test_missing_and_misshapen_tensors_are_named(tmp_path, smsr_checkpoint):
    import sparsr
    model, tensors, meta = checkpoint.load(smsr_checkpoint)
    broken = dict(tensors)
    del broken["tail.0.bias"]
    path = tmp_path / "missing.pt"
    checkpoint.save(path, model, broken, meta)
    with pytest.raises(CheckpointError, match="tail.0.bias"):
        sparsr.load(path)
    broken = dict(tensors)
    broken["head.0.weight"] = np.zeros((64, 3, 5, 5), np.float32)
    checkpoint.save(path, model, broken, meta)
    with pytest.raises(CheckpointError, match=r"head.0.*\(64, 3, 5, 5\)"):
        sparsr.load(path)
