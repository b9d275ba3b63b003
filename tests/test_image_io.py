"""upscale_image and image files: alpha, 16 bits, grey, palette, orientation,
ICC and EXIF, on a stand-in model whose output is known exactly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms, TiffImagePlugin

from sparsr import ImageError, image
from sparsr.upscale import upscale_image


class Nearest:
    """The model contract (scale, process) with an exact upscale: nearest x2.
    Records what the network was given."""

    scale = 2

    def __init__(self):
        self.inputs = []

    def process(self, rgb):
        assert rgb.dtype == np.float32 and rgb.ndim == 3 and rgb.shape[2] == 3
        self.inputs.append(rgb.copy())
        return np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)


def nearest(a):
    return np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)


def rng_image(shape, dtype=np.uint8, seed=0):
    top = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, top + 1, shape, dtype=np.int64).astype(dtype)


SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# --- arrays -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [None, 2, 3, 4])
def test_arrays_keep_dtype_and_channels(dtype, channels):
    shape = (5, 7) if channels is None else (5, 7, channels)
    a = rng_image(shape, dtype)
    out = upscale_image(Nearest(), a)
    assert out.dtype == dtype and out.shape == (10, 14) + a.shape[2:]
    # nearest is exact, luma of grey replicated is the grey, alpha by the model too
    np.testing.assert_array_equal(out, nearest(a))


def test_16bit_values_reach_the_network_at_full_precision():
    a = np.array([[[1, 257, 1001], [65534, 32769, 12345]]], np.uint16)
    model = Nearest()
    out = upscale_image(model, a)
    # an 8-bit copy would have lost the low byte: 1 -> 0, 1001 -> 1028 ...
    np.testing.assert_array_equal(model.inputs[0], a.astype(np.float32) / np.float32(65535))
    np.testing.assert_array_equal(out, nearest(a))
    assert (out % 257 != 0).any()


def test_grey_runs_as_rgb_and_returns_luma():
    class Tinted(Nearest):
        def process(self, rgb):
            assert np.array_equal(rgb[..., 0], rgb[..., 1])   # grey replicated
            out = super().process(rgb)
            return out * np.array([1.0, 0.5, 0.25], np.float32)

    a = np.full((3, 4), 200, np.uint8)
    out = upscale_image(Tinted(), a)
    # BT.601 luma of (200, 100, 50)
    assert out.shape == (6, 8) and (out == round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)).all()


def test_alpha_by_the_model_or_bicubic():
    rgba = rng_image((6, 5, 4), seed=3)
    model = Nearest()
    out = upscale_image(model, rgba, alpha="model")
    assert len(model.inputs) == 2
    # the alpha pass: alpha as a grey image replicated to RGB
    np.testing.assert_array_equal(model.inputs[1][..., 0], rgba[..., 3] / np.float32(255))
    np.testing.assert_array_equal(out[..., 3], nearest(rgba[..., 3]))
    model = Nearest()
    out = upscale_image(model, rgba, alpha="bicubic")
    assert len(model.inputs) == 1
    ref = Image.fromarray(rgba[..., 3].astype(np.float32) / 255).resize((10, 12),
                                                                         Image.Resampling.BICUBIC)
    expected = np.rint(np.clip(np.asarray(ref) * 255, 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 3], expected)
    assert not np.array_equal(out[..., 3], nearest(rgba[..., 3]))
    np.testing.assert_array_equal(out[..., :3], nearest(rgba[..., :3]))


def test_constant_alpha_stays_exact_without_a_second_pass():
    class Ringing(Nearest):
        def process(self, rgb):
            return super().process(rgb) * np.float32(0.99)

    rgba = rng_image((4, 4, 4))
    rgba[..., 3] = 255
    model = Ringing()
    out = upscale_image(model, rgba)
    assert len(model.inputs) == 1 and (out[..., 3] == 255).all()


def test_outscale_resizes_the_output():
    a = rng_image((10, 12, 3))
    out = upscale_image(Nearest(), a, outscale=1.5)
    assert out.shape == (15, 18, 3)
    flat = np.full((9, 11, 4), 77, np.uint16)
    assert (upscale_image(Nearest(), flat, outscale=3.5) == 77).all()
    np.testing.assert_array_equal(upscale_image(Nearest(), a, outscale=2), nearest(a))
    assert upscale_image(Nearest(), a, outscale=0.01).shape == (1, 1, 3)


def test_progress_calls_at_start_and_end():
    calls = []
    rgba = rng_image((4, 6, 4))
    upscale_image(Nearest(), rgba, progress=lambda done, total: calls.append((done, total)))
    total = 2 * 4 * 6
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert all(t == total for _, t in calls)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4, 3), np.float32), "uint8 or uint16 image, got dtype float32"),
    (np.zeros((4, 4, 5), np.uint8), "got 5"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
    (Image.new("F", (4, 4)), "mode 'F'"),
    ("x.png", "PIL image or a numpy"),
])
def test_bad_images(bad, message):
    with pytest.raises(ImageError, match=message):
        upscale_image(Nearest(), bad)


def test_bad_arguments_and_a_model_breaking_the_contract():
    a = rng_image((4, 4, 3))
    with pytest.raises(ValueError, match="alpha must be one of"):
        upscale_image(Nearest(), a, alpha="drop")
    with pytest.raises(ValueError, match="outscale"):
        upscale_image(Nearest(), a, outscale=0)

    class Wrong(Nearest):
        scale = 3

    with pytest.raises(ValueError, match=r"expected \(12, 12, 3\) at scale 3"):
        upscale_image(Wrong(), a)


# --- PIL images ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "I;16", "I", "CMYK"])
def test_pil_modes_round_trip(mode):
    rgba = rng_image((5, 6, 4), seed=1)
    src = Image.fromarray(rgba).convert(mode) if mode not in ("I;16", "I") else \
        Image.fromarray(rng_image((5, 6), np.uint16)).convert(mode)
    out = upscale_image(Nearest(), src)
    assert out.mode == mode and out.size == (12, 10)
    np.testing.assert_array_equal(np.asarray(out), nearest(np.asarray(src)))


def test_palette_is_converted_keeping_transparency():
    rgb = rng_image((4, 5, 3), seed=2)
    p = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    out = upscale_image(Nearest(), p)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), nearest(np.asarray(p.convert("RGB"))))
    p.info["transparency"] = 0
    out = upscale_image(Nearest(), p)
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out), nearest(np.asarray(p.convert("RGBA"))))
    assert (np.asarray(out)[..., 3] == 0).any() and (np.asarray(out)[..., 3] == 255).any()


# --- files: 16 bits -------------------------------------------------------------

def deep(shape, seed=0):
    # values with low bytes that matter: an 8-bit path cannot keep them
    a = rng_image(shape, np.uint16, seed)
    a.flat[0], a.flat[1] = 1, 65534
    return a


def encode(pixels, fmt, **kw):
    buf = io.BytesIO()
    image.write(buf, pixels, fmt, **kw)
    return buf.getvalue()


def read_bytes(data, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(data)
    return image.read_file(str(path))


@pytest.mark.parametrize("channels", [2, 3, 4])
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_colour_files_round_trip(tmp_path, fmt, channels):
    a = deep((7, 9, channels))
    data = encode(a, fmt)
    loaded = read_bytes(data, tmp_path, f"x.{fmt.lower()}")
    assert isinstance(loaded.pixels, np.ndarray) and loaded.pixels.dtype == np.uint16
    if fmt == "TIFF" and channels == 2:   # written as RGBA: Pillow cannot open grey + alpha
        a = a[..., [0, 0, 0, 1]]
    np.testing.assert_array_equal(loaded.pixels, a)
    # Pillow's own 8-bit decode of the file sees the high bytes: the file is a
    # standard one, not just one our reader understands.
    with Image.open(io.BytesIO(data)) as im:
        eight = np.asarray(im)
    high = (a >> 8).astype(np.uint8)
    if channels == 2 and fmt == "PNG":   # Pillow shows grey + alpha as RGBA
        eight = eight[..., [0, 3]]
    np.testing.assert_array_equal(eight, high)


def test_16bit_grey_files_round_trip(tmp_path):
    g = deep((6, 5))
    for fmt in ("PNG", "TIFF"):
        loaded = read_bytes(encode(Image.fromarray(g), fmt), tmp_path, f"g.{fmt.lower()}")
        np.testing.assert_array_equal(np.asarray(loaded.pixels), g)


def test_big_endian_uncompressed_16bit_tiff(tmp_path):
    a = deep((3, 4, 3))
    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"MM")
    data = a.astype(">u2").tobytes()
    for tag, value in {256: 4, 257: 3, 258: (16, 16, 16), 259: 1, 262: 2, 273: (0,), 277: 3,
                       278: 3, 279: (len(data),), 284: 1}.items():
        ifd[tag] = value
    raw = b"MM\0*" + (8).to_bytes(4, "big") + ifd.tobytes(8) + data
    np.testing.assert_array_equal(read_bytes(raw, tmp_path, "be.tif").pixels, a)


def test_16bit_png_through_upscale_keeps_16_bits(tmp_path):
    a = deep((5, 6, 3))
    big = upscale_image(Nearest(), read_bytes(encode(a, "PNG"), tmp_path, "d.png").pixels)
    again = read_bytes(encode(big, "PNG"), tmp_path, "d2.png").pixels
    np.testing.assert_array_equal(again, nearest(a))
    # JPEG holds 8 bits: the write rounds
    with Image.open(io.BytesIO(encode(big, "JPEG"))) as im:
        assert im.mode == "RGB" and im.size == (12, 10)


# --- files: orientation and metadata --------------------------------------------

def exif_with(orientation=None, make="TestCam"):
    exif = Image.Exif()
    exif[0x010F] = make
    if orientation is not None:
        exif[image.ORIENTATION] = orientation
    exif.get_ifd(0x8769)[0x9003] = "2024:01:02 03:04:05"
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_exif_transpose(orientation):
    from PIL import ImageOps

    a = rng_image((3, 5, 3), seed=orientation)
    im = Image.fromarray(a)
    im.getexif()[image.ORIENTATION] = orientation
    im.info["exif"] = im.getexif().tobytes()
    expected = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(image.orient_array(a, orientation), expected)
    np.testing.assert_array_equal(np.asarray(image._upright(im, orientation)), expected)


def test_rotated_jpeg_is_read_upright_and_written_with_orientation_1(tmp_path):
    # a wide image stored rotated: orientation 6 means "turn 90 degrees clockwise"
    a = np.zeros((4, 8, 3), np.uint8)
    a[:, :4] = 250       # left half bright
    path = tmp_path / "rot.jpg"
    Image.fromarray(a).save(path, exif=exif_with(6).tobytes(), quality=100)
    loaded = image.read_file(str(path))
    up = np.asarray(loaded.pixels)
    assert up.shape == (8, 4, 3)
    assert up[:4].mean() > 200 and up[4:].mean() < 50   # the left half is now the top
    out = Image.open(io.BytesIO(encode(loaded.pixels, "PNG", exif=loaded.exif)))
    assert out.getexif()[image.ORIENTATION] == 1 and out.getexif()[0x010F] == "TestCam"


@pytest.mark.parametrize("src_fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
@pytest.mark.parametrize("out_fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_icc_and_exif_are_copied(tmp_path, src_fmt, out_fmt):
    path = tmp_path / f"in.{src_fmt.lower()}"
    img = Image.fromarray(rng_image((6, 6, 3)))
    img.save(path, format=src_fmt, icc_profile=SRGB, exif=exif_with(1).tobytes())
    loaded = image.read_file(str(path))
    assert loaded.icc_profile == SRGB
    big = upscale_image(Nearest(), loaded.pixels)
    with Image.open(io.BytesIO(encode(big, out_fmt, icc_profile=loaded.icc_profile,
                                      exif=loaded.exif))) as out:
        assert out.info.get("icc_profile") == SRGB
        exif = out.getexif()
        assert exif[0x010F] == "TestCam"
        assert exif.get_ifd(0x8769).get(0x9003) == "2024:01:02 03:04:05"
        assert out.size == (12, 12)


def test_16bit_png_and_tiff_keep_icc_and_exif(tmp_path):
    exif = exif_with(1).tobytes()
    for fmt in ("PNG", "TIFF"):
        data = encode(deep((4, 4, 4)), fmt, icc_profile=SRGB, exif=exif)
        loaded = read_bytes(data, tmp_path, f"m.{fmt.lower()}")
        assert loaded.icc_profile == SRGB
        assert Image.open(io.BytesIO(data)).getexif()[0x010F] == "TestCam"


def test_tiff_structure_tags_are_not_copied_as_exif(tmp_path):
    path = tmp_path / "t.tif"
    Image.fromarray(rng_image((5, 7, 3))).save(path, exif=exif_with(1).tobytes())
    loaded = image.read_file(str(path))
    exif = Image.Exif()
    exif.load(loaded.exif)
    assert 0x010F in exif and 256 not in exif and 273 not in exif
    big = encode(upscale_image(Nearest(), loaded.pixels), "TIFF", exif=loaded.exif)
    assert Image.open(io.BytesIO(big)).size == (14, 10)


def test_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ImageError, match="bad.png"):
        image.read_file(str(bad))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="junk.jpg: not an image"):
        image.read_file(str(junk))
    truncated = tmp_path / "cut.png"
    buf = io.BytesIO()
    Image.fromarray(rng_image((64, 64, 3))).save(buf, "PNG")
    truncated.write_bytes(buf.getvalue()[:300])
    with pytest.raises(ImageError, match="cut.png: cannot decode"):
        image.read_file(str(truncated))
    with pytest.raises(ImageError, match="no such file"):
        image.read_file(str(tmp_path / "nope.png"))


def test_large_16bit_files_cross_encoder_bands(tmp_path):
    # more rows than one band of the encoders (4 MB of samples)
    a = deep((1500, 800, 3), seed=9)
    for fmt in ("PNG", "TIFF"):
        data = encode(a, fmt)
        np.testing.assert_array_equal(read_bytes(data, tmp_path, f"l.{fmt.lower()}").pixels, a)
        with Image.open(io.BytesIO(data)) as im:
            np.testing.assert_array_equal(np.asarray(im), (a >> 8).astype(np.uint8))


@pytest.mark.parametrize("pixels", [
    np.tile(np.arange(64, dtype=np.uint8), (48, 1))[..., None].repeat(3, 2),   # 8-bit, Pillow
    np.tile(np.arange(0, 65536, 1024, dtype=np.uint16), (48, 1)),                 # 16-bit PNG
], ids=["png8", "png16"])
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_compression_level_changes_the_size_not_the_pixels(tmp_path, fmt, pixels):
    sizes = {}
    for level in (0, 9):
        data = encode(pixels, fmt, compression=level)
        loaded = read_bytes(data, tmp_path, f"c{level}.{fmt.lower()}")
        np.testing.assert_array_equal(np.asarray(loaded.pixels), pixels)
        sizes[level] = len(data)
    assert sizes[9] < sizes[0] / 2          # level 0 stores the deflate blocks uncompressed
    assert len(encode(pixels, fmt)) < sizes[0]


@pytest.mark.parametrize("level", [-1, 10, 2.5, True, "4"])
def test_bad_compression_level(level):
    with pytest.raises(ValueError, match="deflate level 0..9"):
        encode(np.zeros((4, 4, 3), np.uint8), "PNG", compression=level)
