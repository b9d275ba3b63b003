"""The sparsr checkpoint file: a JSON header and raw little-endian tensors.

Layout (all integers little-endian)::

    offset 0   8 bytes   magic b"SPARSRCK"
    offset 8   u32       format version (1)
    offset 12  u32       reserved (0)
    offset 16  u64       header length H in bytes
    offset 24  H bytes   UTF-8 JSON header
    ...        padding   to a multiple of 64 bytes
    data       the tensors, each 64-byte aligned, at offsets relative to data

The header holds the network description ("model"), free-form "metadata",
"data_nbytes" (so a truncated file is detected) and, per tensor, dtype, shape,
offset, nbytes and the CRC-32 of its bytes (so a corrupted one is detected).
Reading never executes anything from the file: there is no pickle in it.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import CheckpointError

MAGIC = b"SPARSRCK"
VERSION = 1
_PREFIX = struct.Struct("<8sIIQ")
_ALIGN = 64
_MAX_HEADER = 64 << 20
# The only dtypes a checkpoint may hold; anything else is refused on read.
_DTYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8, "int8": np.int8,
           "uint16": np.uint16, "int64": np.int64, "float16": np.float16}


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def save(path: str | os.PathLike, model: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
         metadata: Mapping[str, Any] | None = None) -> None:
    """Writes a checkpoint atomically (a temporary file renamed into place)."""
    entries = {}
    blobs = []
    offset = 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype.name not in _DTYPES:
            raise CheckpointError(f"tensor {name!r}: dtype {array.dtype} cannot be stored")
        data = array.astype(dtype.newbyteorder("<"), copy=False).tobytes()
        offset = _align(offset)
        entries[name] = {"dtype": dtype.name, "shape": list(array.shape), "offset": offset,
                         "nbytes": len(data), "crc32": zlib.crc32(data)}
        blobs.append((offset, data))
        offset += len(data)
    header = {"format": "sparsr-checkpoint", "version": VERSION, "model": dict(model),
              "metadata": dict(metadata or {}), "data_nbytes": offset, "tensors": entries}
    header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")
    data_start = _align(_PREFIX.size + len(header_bytes))

    def write(f) -> None:
        f.write(_PREFIX.pack(MAGIC, VERSION, 0, len(header_bytes)))
        f.write(header_bytes)
        f.write(b"\0" * (data_start - _PREFIX.size - len(header_bytes)))
        pos = 0
        for off, data in blobs:
            f.write(b"\0" * (off - pos))
            f.write(data)
            pos = off + len(data)

    write_atomically(path, write)


def write_atomically(path: str | os.PathLike, write, suffix: str = ".tmp") -> None:
    """Calls write(binary file) on a temporary file beside path, then renames it
    into place: a failure (or KeyboardInterrupt) never leaves half a file nor
    touches an existing one. Replacing a file keeps its mode and, where allowed,
    its group; a new file gets the mode a plain open() would give it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=suffix,
                               dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _chmod_as_new_file(tmp, replacing=path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _chmod_as_new_file(path: str, replacing: Path | None = None) -> None:
    """mkstemp makes 0600 files: give path the mode (and group) of the file it
    replaces, or else the mode a plain open() would give a new file."""
    import stat

    try:
        old = os.stat(replacing) if replacing is not None else None
    except FileNotFoundError:
        old = None
    if old is not None:
        os.chmod(path, stat.S_IMODE(old.st_mode))
        if old.st_gid != os.stat(path).st_gid:
            try:
                os.chown(path, -1, old.st_gid)
            except OSError:
                pass   # not a member of that group: the file keeps ours
        return
    # The umask, read without setting it: os.umask(0) would let another
    # thread create a file with mode 0666 meanwhile.
    umask = None
    try:
        with open("/proc/self/status") as f:
            umask = next((int(line.split()[1], 8) for line in f if line.startswith("Umask:")),
                         None)
    except (OSError, ValueError):
        pass
    if umask is None:
        # No /proc: a probe file created with 0666 gets 0666 less the umask.
        probe = f"{path}.umask"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            umask = 0o666 & ~stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
            os.unlink(probe)
    os.chmod(path, 0o666 & ~umask)


def _describe_foreign(head: bytes) -> str:
    if head.startswith(b"PK\x03\x04"):
        return ("a ZIP archive (a PyTorch >= 1.6 checkpoint?); convert PyTorch weights with "
                "tools/convert.py")
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return ("a Python pickle (a legacy PyTorch checkpoint?); sparsr never unpickles: "
                "convert PyTorch weights with tools/convert.py")
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff"):
        return "an image, not a model"
    if not head:
        return "an empty file"
    return "not a sparsr checkpoint (unknown content)"


def load(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray], dict]:
    """Reads a checkpoint: (model description, tensors, metadata).

    Raises CheckpointError naming the file and the problem for anything that is
    not a complete, intact sparsr checkpoint.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from None

    if len(raw) < _PREFIX.size or not raw.startswith(MAGIC):
        if raw.startswith(MAGIC[: len(raw)]) and raw:
            raise CheckpointError(f"{path}: truncated sparsr checkpoint ({len(raw)} bytes)")
        raise CheckpointError(f"{path}: {_describe_foreign(raw[:16])}")
    magic, version, _, header_len = _PREFIX.unpack_from(raw)
    if version != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version}; this sparsr reads "
                              f"version {VERSION}")
    if header_len > _MAX_HEADER:
        raise CheckpointError(f"{path}: corrupted header length ({header_len} bytes)")
    if _PREFIX.size + header_len > len(raw):
        raise CheckpointError(f"{path}: truncated checkpoint (header cut off at {len(raw)} bytes)")
    try:
        header = json.loads(raw[_PREFIX.size:_PREFIX.size + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupted header ({e})") from None
    if not isinstance(header, dict) or header.get("format") != "sparsr-checkpoint":
        raise CheckpointError(f"{path}: header is not a sparsr checkpoint header")
    for key, kind in (("model", dict), ("tensors", dict), ("data_nbytes", int)):
        if not isinstance(header.get(key), kind):
            raise CheckpointError(f"{path}: header field {key!r} is missing or malformed")

    data_start = _align(_PREFIX.size + header_len)
    data_nbytes = header["data_nbytes"]
    if data_start + data_nbytes > len(raw):
        raise CheckpointError(f"{path}: truncated checkpoint ({len(raw)} bytes, expected "
                              f"{data_start + data_nbytes})")
    if data_start + data_nbytes < len(raw):
        raise CheckpointError(f"{path}: {len(raw) - data_start - data_nbytes} unexpected bytes "
                              "after the tensor data")
    buffer = memoryview(raw)[data_start:data_start + data_nbytes]

    tensors = {}
    for name, entry in header["tensors"].items():
        try:
            dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
            shape = tuple(int(d) for d in entry["shape"])
            offset, nbytes, crc = int(entry["offset"]), int(entry["nbytes"]), int(entry["crc32"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed entry") from None
        if any(d < 0 for d in shape) or nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name!r}: shape {shape} does not match "
                                  f"{nbytes} bytes of {dtype.name}")
        if offset < 0 or offset + nbytes > data_nbytes:
            raise CheckpointError(f"{path}: tensor {name!r} lies outside the data section")
        chunk = buffer[offset:offset + nbytes]
        if zlib.crc32(chunk) != crc:
            raise CheckpointError(f"{path}: tensor {name!r} is corrupted (checksum mismatch)")
        tensors[name] = np.frombuffer(chunk, dtype=dtype).reshape(shape).astype(
            dtype.newbyteorder("="), copy=True)
    return header["model"], tensors, header.get("metadata", {})


# Sparse weights are stored as a bit mask of the nonzero positions (np.packbits,
# row-major over the dense shape) and the nonzero values in that order:
# "<name>.mask" (uint8), "<name>.values" (float32) and "<name>.shape" (int64).
# At any density it takes at most 1/32 more than the dense form.

def encode_sparse(tensors: Mapping[str, np.ndarray], names) -> dict[str, np.ndarray]:
    """Returns tensors with each of `names` replaced by its mask/values form."""
    out = dict(tensors)
    for name in names:
        w = np.ascontiguousarray(out.pop(name), dtype=np.float32)
        nz = w.reshape(-1) != 0
        out[name + ".mask"] = np.packbits(nz)
        out[name + ".values"] = w.reshape(-1)[nz]
        out[name + ".shape"] = np.asarray(w.shape, dtype=np.int64)
    return out


def decode_sparse(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of encode_sparse: every mask/values triple becomes a dense tensor."""
    out = {k: v for k, v in tensors.items() if not k.endswith((".mask", ".values", ".shape"))}
    for key in tensors:
        if not key.endswith(".mask"):
            continue
        name = key[: -len(".mask")]
        try:
            values, shape = tensors[name + ".values"], tensors[name + ".shape"]
        except KeyError as e:
            raise CheckpointError(f"sparse tensor {name!r} lacks {e.args[0]!r}") from None
        shape = tuple(int(d) for d in shape)
        n = int(np.prod(shape, dtype=np.int64))
        bits = tensors[key]
        if bits.dtype != np.uint8 or bits.size != (n + 7) // 8:
            raise CheckpointError(f"sparse tensor {name!r}: mask does not fit shape {shape}")
        nz = np.unpackbits(bits, count=n).astype(bool)
        if int(nz.sum()) != values.size:
            raise CheckpointError(f"sparse tensor {name!r}: {values.size} values for "
                                  f"{int(nz.sum())} nonzero positions")
        if name in out:
            raise CheckpointError(f"tensor {name!r} is stored both dense and sparse")
        dense = np.zeros(n, dtype=np.float32)
        dense[nz] = values
        out[name] = dense.reshape(shape)
    return out
