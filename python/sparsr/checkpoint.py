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
import math
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
_MAX_HEADER = 8 << 20
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

    Raises CheckpointError naming the file, the field and the problem for
    anything that is not a complete, intact sparsr checkpoint. Every header
    field is checked before anything is allocated from it: lengths, counts and
    shapes are bounded by the file's size, so a hostile header costs at most a
    small multiple of the file in memory and time.
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
    try:
        return _parse(raw)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _parse(raw: bytes) -> tuple[dict, dict[str, np.ndarray], dict]:
    if len(raw) < _PREFIX.size or not raw.startswith(MAGIC):
        if raw.startswith(MAGIC[: len(raw)]) and raw:
            raise CheckpointError(f"truncated sparsr checkpoint ({len(raw)} bytes)")
        raise CheckpointError(_describe_foreign(raw[:16]))
    magic, version, _, header_len = _PREFIX.unpack_from(raw)
    if version != VERSION:
        raise CheckpointError(f"checkpoint format version {version}; this sparsr reads "
                              f"version {VERSION}")
    if header_len > _MAX_HEADER:
        raise CheckpointError(f"corrupted header length ({header_len} bytes; at most "
                              f"{_MAX_HEADER})")
    if _PREFIX.size + header_len > len(raw):
        raise CheckpointError(f"truncated checkpoint (header cut off at {len(raw)} bytes)")
    header = parse_json(raw[_PREFIX.size:_PREFIX.size + header_len], "header")
    if not isinstance(header, dict) or header.get("format") != "sparsr-checkpoint":
        raise CheckpointError("header is not a sparsr checkpoint header")
    if header.get("version") != VERSION or isinstance(header.get("version"), bool):
        raise CheckpointError(f"header field 'version' is {header.get('version')!r:.40}, "
                              f"expected {VERSION}")
    for key, kind in (("model", dict), ("tensors", dict)):
        if not isinstance(header.get(key), kind):
            raise CheckpointError(f"header field {key!r} is missing or not an object")
    metadata = header.get("metadata", {})
    if not isinstance(metadata, dict):
        raise CheckpointError("header field 'metadata' is not an object")

    data_start = _align(_PREFIX.size + header_len)
    data_nbytes = _int_field(header, "data_nbytes", 0, len(raw), "header field")
    if data_start + data_nbytes > len(raw):
        raise CheckpointError(f"truncated checkpoint ({len(raw)} bytes, expected "
                              f"{data_start + data_nbytes})")
    if data_start + data_nbytes < len(raw):
        raise CheckpointError(f"{len(raw) - data_start - data_nbytes} unexpected bytes "
                              "after the tensor data")
    buffer = memoryview(raw)[data_start:data_start + data_nbytes]

    entries = [(name, _tensor_entry(name, entry, data_nbytes, len(raw)))
               for name, entry in header["tensors"].items()]
    _check_disjoint(entries)
    tensors = {}
    for name, (dtype, shape, offset, nbytes, crc) in entries:
        chunk = buffer[offset:offset + nbytes]
        if zlib.crc32(chunk) != crc:
            raise CheckpointError(f"tensor {name!r} is corrupted (checksum mismatch)")
        tensors[name] = np.frombuffer(chunk, dtype=dtype).reshape(shape).astype(
            dtype.newbyteorder("="), copy=True)
    return header["model"], tensors, metadata


# -- header checks -------------------------------------------------------------

# JSON nesting deeper than this is refused before parsing (json recurses per
# level); a sparsr header nests about 8 deep.
MAX_JSON_DEPTH = 64
# Values in the header (objects, arrays, strings, numbers): each costs a
# Python object, so this bounds the memory of parsing whatever the length.
# A header holds about 20 per graph node.
MAX_JSON_VALUES = 500_000
_INT64 = 1 << 63
_SCAN_CHUNK = 1 << 20
_JSON_SPECIAL = np.zeros(256, dtype=bool)
_JSON_SPECIAL[list(b'[]{}",\\')] = True
_JSON_STEP = np.zeros(256, dtype=np.int32)
_JSON_STEP[list(b"[{")] = 1
_JSON_STEP[list(b"]}")] = -1


def parse_json(text: bytes, what: str) -> Any:
    """JSON bytes -> Python, or CheckpointError: nesting and size are bounded
    before parsing; NaN, Infinity, numbers that overflow a double and integers
    outside int64 are refused; a key given twice in one object is refused."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"corrupted {what} (not UTF-8 at byte {e.start})") from None
    depth, values = _json_extent(text)
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(f"corrupted {what}: nested {depth} deep (at most "
                              f"{MAX_JSON_DEPTH})")
    if values > MAX_JSON_VALUES:
        raise CheckpointError(f"corrupted {what}: {values} values (at most {MAX_JSON_VALUES})")
    bad: list[_Refused] = []

    def refuse(why: str):
        bad.append(_Refused(why))
        return bad[-1]

    def number(text: str, parse) -> Any:
        # An int's length is checked first: int() of thousands of digits is
        # slow, or refused by Python itself.
        if parse is int and len(text.lstrip("-")) > 19:
            return refuse(f"integer {text[:40]} is outside int64")
        value = parse(text)
        if parse is int and not -_INT64 <= value < _INT64:
            return refuse(f"integer {text[:40]} is outside int64")
        if parse is float and not math.isfinite(value):
            return refuse(f"{text[:40]} overflows a double")
        return value

    def unique(pairs: list[tuple[str, Any]]) -> Any:
        out = dict(pairs)
        if len(out) == len(pairs):
            return out
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        return refuse(f"key {dup!r:.60} appears twice in one object")

    try:
        # The decoded text: json.loads of bytes would guess UTF-16 or UTF-32
        # from leading zero bytes.
        tree = json.loads(decoded, parse_constant=lambda c: refuse(f"{c} is not a number"),
                          parse_float=lambda t: number(t, float),
                          parse_int=lambda t: number(t, int), object_pairs_hook=unique)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"corrupted {what} ({e})") from None
    except RecursionError:   # unreachable below MAX_JSON_DEPTH; kept as a guard
        raise CheckpointError(f"corrupted {what}: nested too deep") from None
    if bad:
        path = _path_to(tree, bad[0]) or "?"
        raise CheckpointError(f"corrupted {what}: field {path}: {bad[0].why}")
    return tree


class _Refused:
    """What a JSON hook returns for a value it refuses; found again by its
    path once the whole tree is parsed, so that the error names the field."""

    def __init__(self, why: str):
        self.why = why


def _path_to(tree: Any, target: Any, path: str = "") -> str | None:
    """The first path (a.b[3].c) in a JSON tree at which `target` is, by identity."""
    stack = [(tree, path)]
    while stack:
        node, at = stack.pop()
        if node is target:
            return at or "(top)"
        if isinstance(node, dict):
            stack.extend((v, f"{at}.{k}" if at else str(k)) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((v, f"{at}[{i}]") for i, v in reversed(list(enumerate(node))))
    return None


def _json_extent(text: bytes) -> tuple[int, int]:
    """(deepest nesting, an upper bound of the number of values) of JSON text,
    from the brackets and commas outside strings. numpy over the positions of
    the characters that matter, 1 MB at a time: fast, in bounded memory, and
    it stops as soon as a limit is passed. A quote delimits a string unless an
    odd run of backslashes precedes it (backslashes outside strings are
    invalid JSON, which json.loads refuses afterwards)."""
    depth = deepest = 0
    values = 1
    quotes = 0          # unescaped quotes so far: odd inside a string
    backslashes = 0     # the run of backslashes that ends the previous chunk
    for start in range(0, len(text), _SCAN_CHUNK):
        a = np.frombuffer(text, np.uint8, min(_SCAN_CHUNK, len(text) - start), start)
        pos = np.flatnonzero(_JSON_SPECIAL[a]).astype(np.int32)
        ch = a[pos]
        quote = ch == ord('"')
        if pos.size and (backslashes or (ch == ord("\\")).any()):   # most headers have none
            is_bs = ch == ord("\\")
            # link[i]: element i comes right after a backslash.
            link = np.empty(pos.size, dtype=bool)
            np.logical_and(is_bs[:-1], np.diff(pos) == 1, out=link[1:])
            link[0] = backslashes > 0 and pos[0] == 0
            # run[i]: the backslashes right before element i (a streak of
            # links; one reaching element 0 continues the previous chunk's run).
            idx = np.arange(pos.size, dtype=np.int32)
            last_unlinked = np.maximum.accumulate(np.where(link, np.int32(-1), idx))
            run = idx - last_unlinked
            run[last_unlinked < 0] += backslashes - 1
            quote &= (run & 1) == 0    # an odd run escapes a quote
            ends_in_bs = pos[-1] == a.size - 1 and is_bs[-1]
            backslashes = int(run[-1]) + 1 if ends_in_bs else 0
        else:
            backslashes = 0
        outside = ((np.cumsum(quote, dtype=np.int32) + quotes) & 1) == 0
        step = _JSON_STEP[ch] * outside
        level = np.cumsum(step, dtype=np.int32) + depth
        if level.size:
            deepest = max(deepest, int(level.max()))
            depth = int(level[-1])
        values += int(np.count_nonzero(step > 0)) + int(
            np.count_nonzero((ch == ord(",")) & outside))
        quotes += int(np.count_nonzero(quote))
        if deepest > MAX_JSON_DEPTH or values > MAX_JSON_VALUES:
            break
    return deepest, values


def _int_field(d: Mapping, key: str, lo: int, hi: int, where: str) -> int:
    """d[key] as an int in [lo, hi] (a bool is not an int here)."""
    value = d.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(f"{where} {key!r} is missing or not an integer "
                              f"(got {value!r:.40})")
    if not lo <= value <= hi:
        raise CheckpointError(f"{where} {key!r} is {value}, outside [{lo}, {hi}]")
    return value


_MAX_NDIM = 8


def _tensor_entry(name: str, entry: Any, data_nbytes: int, file_size: int):
    """(dtype, shape, offset, nbytes, crc) of one tensor entry, every field checked."""
    where = f"tensor {name!r:.80}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where} has a malformed entry (not an object)")
    dtype_name = entry.get("dtype")
    if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
        raise CheckpointError(f"{where}: field 'dtype' is {dtype_name!r:.40}, not one of "
                              f"{', '.join(sorted(_DTYPES))}")
    dtype = np.dtype(_DTYPES[dtype_name]).newbyteorder("<")
    shape = entry.get("shape")
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise CheckpointError(f"{where}: field 'shape' must be a list of at most {_MAX_NDIM} "
                              f"integers, got {shape!r:.60}")
    # Each dimension, and the product of the nonzero ones, is bounded by the
    # file: a zero-sized tensor cannot claim astronomically large sides.
    extent = 1
    for d in shape:
        if d < 0:
            raise CheckpointError(f"{where}: field 'shape' {shape} has a negative size")
        extent *= max(d, 1)
        if extent > max(file_size, 1):
            raise CheckpointError(f"{where}: field 'shape' {shape} is larger than the file")
    offset = _int_field(entry, "offset", 0, data_nbytes, f"{where}: field")
    nbytes = _int_field(entry, "nbytes", 0, data_nbytes, f"{where}: field")
    crc = _int_field(entry, "crc32", 0, 0xFFFFFFFF, f"{where}: field")
    if nbytes != math.prod(shape) * dtype.itemsize:
        raise CheckpointError(f"{where}: shape {tuple(shape)} does not match {nbytes} bytes "
                              f"of {dtype.name}")
    if offset + nbytes > data_nbytes:
        raise CheckpointError(f"{where} lies outside the data section")
    return dtype, tuple(shape), offset, nbytes, crc


def _check_disjoint(entries: list) -> None:
    spans = sorted((offset, offset + nbytes, name)
                   for name, (_, _, offset, nbytes, _) in entries if nbytes)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise CheckpointError(f"tensors {a!r:.80} and {b!r:.80} overlap in the data section")


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


_SPARSE_PARTS = (".mask", ".values", ".shape")


def decode_sparse(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of encode_sparse: every mask/values/shape triple becomes a dense
    float32 tensor. Each part is checked (1-D, its dtype, sizes that agree)
    before the dense tensor is allocated; a part without the other two, or a
    name stored both dense and sparse, is refused."""
    out = {k: v for k, v in tensors.items() if not k.endswith(_SPARSE_PARTS)}
    names = dict.fromkeys(k[: k.rindex(".")] for k in tensors if k.endswith(_SPARSE_PARTS))
    for name in names:
        parts = [name + p for p in _SPARSE_PARTS]
        missing = [p for p in parts if p not in tensors]
        if missing:
            raise CheckpointError(f"sparse tensor {name!r} lacks {missing[0]!r}")
        bits, values, shape = (tensors[p] for p in parts)
        if name in out:
            raise CheckpointError(f"tensor {name!r} is stored both dense and sparse")
        for part, t, kinds in ((parts[0], bits, "u"), (parts[1], values, "f"),
                               (parts[2], shape, "iu")):
            if t.ndim != 1 or t.dtype.kind not in kinds or (kinds == "u" and t.dtype != np.uint8):
                want = {"u": "uint8", "f": "float", "iu": "integer"}[kinds]
                raise CheckpointError(f"sparse tensor {name!r}: {part!r} must be a 1-D {want} "
                                      f"tensor, got {t.dtype} of shape {t.shape}")
        dims = [int(d) for d in shape]
        if not 1 <= len(dims) <= _MAX_NDIM or any(d < 0 for d in dims):
            raise CheckpointError(f"sparse tensor {name!r}: shape {dims[:_MAX_NDIM + 1]} is "
                                  f"not a shape of 1 to {_MAX_NDIM} sizes >= 0")
        # Python ints: a product of int64 sizes cannot wrap.
        n = math.prod(dims)
        if bits.size != (n + 7) // 8:
            raise CheckpointError(f"sparse tensor {name!r}: a mask of {bits.size} bytes does "
                                  f"not fit shape {tuple(dims)}")
        nz = np.unpackbits(bits, count=n).astype(bool)
        count = int(np.count_nonzero(nz))
        if count != values.size:
            raise CheckpointError(f"sparse tensor {name!r}: {values.size} values for "
                                  f"{count} nonzero positions")
        dense = np.zeros(n, dtype=np.float32)
        dense[nz] = values
        out[name] = dense.reshape(dims)
    return out
