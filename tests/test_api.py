"""The public API on real weights: upscale, input checks, info, CLI, no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import sparsr
from sparsr import ImageError


@pytest.fixture(scope="module")
def small_rgb():
    rng = np.random.default_rng(1)
    # smooth content with an edge: masks then mark some pixels important
    y, x = np.mgrid[0:23, 0:31]
    base = (np.sin(x / 3.0) * 60 + 120 + (x > 15) * 50).astype(np.float32)
    img = np.stack([base, base * 0.8, 255 - base], axis=2) + rng.normal(0, 3, (23, 31, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_upscale_numpy_returns_scaled_uint8(smsr_model, small_rgb):
    out = smsr_model.upscale(small_rgb)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.shape == (46, 62, 3)
    # The network adds detail to a bicubic base: the output must resemble the input.
    down = out.reshape(23, 2, 31, 2, 3).mean(axis=(1, 3))
    assert np.abs(down - small_rgb).mean() < 12


def test_upscale_pil_round_trips_mode(smsr_model, small_rgb):
    out = smsr_model.upscale(Image.fromarray(small_rgb))
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (62, 46)
    np.testing.assert_array_equal(np.asarray(out), smsr_model.upscale(small_rgb))
    grey = smsr_model.upscale(Image.fromarray(small_rgb).convert("L"))
    assert grey.mode == "L" and grey.size == (62, 46)
    rgba = Image.fromarray(small_rgb).convert("RGBA")
    rgba.putalpha(128)
    out = smsr_model.upscale(rgba)
    assert out.mode == "RGBA" and out.size == (62, 46)
    assert np.asarray(out)[..., 3].min() == 128


def test_greyscale_array_gives_greyscale(smsr_model, small_rgb):
    grey = small_rgb[..., 1].copy()
    out = smsr_model.upscale(grey)
    assert out.shape == (46, 62) and out.dtype == np.uint8


def test_non_contiguous_input(smsr_model, small_rgb):
    wide = np.zeros((23, 62, 3), np.uint8)
    wide[:, ::2] = small_rgb
    view = wide[:, ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(smsr_model.upscale(view), smsr_model.upscale(small_rgb))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (2, 2), (3, 5), (17, 1)])
def test_tiny_images(smsr_model, shape):
    img = np.full(shape + (3,), 100, np.uint8)
    out = smsr_model.upscale(img)
    assert out.shape == (2 * shape[0], 2 * shape[1], 3)
    # a flat image stays flat (within rounding of the learned residual)
    assert np.abs(out.astype(int) - 100).max() <= 3


@pytest.mark.parametrize("bad, message", [
    (np.zeros((8, 8, 5), np.uint8), "got 5"),
    (np.zeros((8, 8, 3), np.float32), "uint8 or uint16 image, got dtype float32"),
    (np.zeros((8, 8, 3), np.int32), "uint8 or uint16 image, got dtype int32"),
    (np.zeros((0, 8, 3), np.uint8), "empty"),
    (np.zeros((8, 0), np.uint8), "empty"),
    (np.zeros((2, 8, 8, 3), np.uint8), "shape"),
    ("image.png", "PIL image or a numpy"),
    (None, "PIL image or a numpy"),
])
def test_bad_images(smsr_model, bad, message):
    with pytest.raises(ImageError, match=message):
        smsr_model.upscale(bad)


def test_unsupported_pil_mode(smsr_model):
    with pytest.raises(ImageError, match="mode 'F'"):
        smsr_model.upscale(Image.new("F", (4, 4)))


def test_bad_mode_argument(smsr_model, small_rgb):
    with pytest.raises(ValueError, match="mode"):
        smsr_model.upscale(small_rgb, mode="fast")


def test_info_reports_layers_and_macs(smsr_model, small_rgb):
    info = smsr_model.info(input_size=(360, 640))
    assert info["scale"] == 2 and info["architecture"] == "smsr"
    names = [r["name"] for r in info["layers"]]
    assert "body.0.body.body.0" in names and "tail.0" in names
    core = [r for r in info["layers"] if ".body.body." in r["name"]]
    assert len(core) == 20 and all(r["params"] == 36864 for r in core)
    assert all(r["sparsity"] == pytest.approx(0.0, abs=1e-3) for r in core)
    # dense MACs at 640x360: every conv at every pixel (the paper's dense SMSR
    # baseline counts the same convolutions), the attention's once (on means)
    expected = 0
    for r in info["layers"]:
        if ".spa_mask." not in r["name"]:
            co, ci, kh, kw = r["shape"]
            pixels = 1 if ".ca." in r["name"] else 360 * 640
            expected += pixels * co * ci * kh * kw
    assert info["dense_macs"] >= expected
    measured = smsr_model.info(image=small_rgb)
    assert 0 < measured["executed_macs"] < measured["dense_macs"]
    assert len(measured["mask_density"]) == 5


def test_cpu_info_names_active_kernels():
    info = sparsr.cpu_info()
    active = info["active_isa"]
    assert active in ("scalar", "avx2", "avx512", "avx512bf16", "amx")
    assert info["threads"] >= 1
    # avx512bf16 and amx run the avx512 f32 kernels and add bf16 ones.
    levels = {active, "scalar"} | ({"avx512", "avx512bf16"} if active == "amx" else
                                   {"avx512"} if active == "avx512bf16" else set())
    assert all(name.rsplit("_", 1)[1] in levels for name in info["kernels"].values())


def test_runtime_never_imports_torch(smsr_checkpoint):
    code = (
        "import sys, numpy as np, sparsr\n"
        f"m = sparsr.load({str(smsr_checkpoint)!r})\n"
        "out = m.upscale(np.full((9, 11, 3), 90, np.uint8))\n"
        "m.info(input_size=(9, 11))\n"
        "assert out.shape == (18, 22, 3)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sparsr.cli", *map(str, args)],
                          capture_output=True, text=True)


def test_cli_upscale_and_refusals(tmp_path, smsr_checkpoint, small_rgb):
    src = tmp_path / "in.png"
    Image.fromarray(small_rgb).save(src)
    dst = tmp_path / "out.png"
    r = _cli("upscale", src, "-o", dst, "-m", smsr_checkpoint)
    assert r.returncode == 0, r.stderr
    with Image.open(dst) as im:
        assert im.size == (62, 46)
        saved = np.asarray(im)
    model = sparsr.load(smsr_checkpoint)
    np.testing.assert_array_equal(saved, model.upscale(small_rgb))
    # never clobbers: an existing output needs --force, the input is never the output
    r = _cli("upscale", src, "-o", dst, "-m", smsr_checkpoint)
    assert r.returncode == 2 and "exists" in r.stderr
    r = _cli("upscale", src, "-o", src, "-m", smsr_checkpoint, "--force")
    assert r.returncode == 2 and "overwrite the input" in r.stderr
    # a bad model or a bad image: a one-line error, no traceback, nothing written
    r = _cli("upscale", src, "-o", tmp_path / "x.png", "-m", src)
    assert r.returncode == 2 and "image, not a model" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    r = _cli("upscale", bad, "-o", tmp_path / "y.png", "-m", smsr_checkpoint)
    assert r.returncode == 2 and "bad.png" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


def test_cli_upscale_batch_into_directory(tmp_path, smsr_checkpoint, small_rgb):
    frames = tmp_path / "frames"
    frames.mkdir()
    a, b, bad = frames / "f001.png", frames / "f002.png", frames / "f003.png"
    Image.fromarray(small_rgb).save(a)
    Image.fromarray(small_rgb[:17, :20]).save(b)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    out = tmp_path / "out"
    # A bad frame is named and skipped; the others are written; the exit code says it failed.
    r = _cli("upscale", a, b, bad, "-o", out, "-m", smsr_checkpoint)
    assert r.returncode == 2, r.stdout
    assert "f003.png" in r.stderr and "1 of 3 images failed" in r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["f001.png", "f002.png"]
    model = sparsr.load(smsr_checkpoint)
    for src, img in ((a, small_rgb), (b, small_rgb[:17, :20])):
        with Image.open(out / src.name) as im:
            np.testing.assert_array_equal(np.asarray(im), model.upscale(img))
    # Refusals come before any work: one existing output stops the whole batch.
    c = frames / "f004.png"
    Image.fromarray(small_rgb).save(c)
    r = _cli("upscale", a, c, "-o", out, "-m", smsr_checkpoint)
    assert r.returncode == 2 and "f001.png exists" in r.stderr
    assert not (out / "f004.png").exists()
    # Two inputs of one name would overwrite each other.
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(small_rgb).save(other / "f001.png")
    r = _cli("upscale", a, other / "f001.png", "-o", tmp_path / "out2", "-m", smsr_checkpoint)
    assert r.returncode == 2 and "would both be written" in r.stderr
    assert not (tmp_path / "out2").exists()
    # Several inputs need a directory, not a file.
    r = _cli("upscale", a, c, "-o", a, "-m", smsr_checkpoint)
    assert r.returncode == 2 and "is a file" in r.stderr
    # One input into an existing directory keeps its name.
    r = _cli("upscale", c, "-o", out, "-m", smsr_checkpoint)
    assert r.returncode == 0, r.stderr
    assert (out / "f004.png").exists()


def test_cli_info_and_cpu(smsr_checkpoint):
    r = _cli("info", smsr_checkpoint, "--size", 360, 640)
    assert r.returncode == 0, r.stderr
    assert "body.4.body.body.3" in r.stdout and "dense MACs at 640x360" in r.stdout
    r = _cli("cpu")
    assert r.returncode == 0 and "active ISA" in r.stdout


def test_convert_command_writes_a_model_and_refuses_to_overwrite(shared_dir, tmp_path):
    pytest.importorskip("torch", reason="converting PyTorch weights needs torch")
    out = tmp_path / "rfdn.pt"
    r = _cli("convert", shared_dir / "models" / "rfdn_aim_x4.pth", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "rfdn x4" in r.stdout and out.is_file()
    m = sparsr.load(out)
    assert m.scale == 4 and m.architecture == "rfdn"
    again = _cli("convert", shared_dir / "models" / "rfdn_aim_x4.pth", "-o", out)
    assert again.returncode == 2 and "exists" in again.stderr
    wrong = _cli("convert", shared_dir / "models" / "carn_m.pth", "-o", tmp_path / "c.pt",
                 "--scale", "8")
    assert wrong.returncode == 2 and "x2, x3, x4" in wrong.stderr
    image = tmp_path / "not_weights.pth"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    bad = _cli("convert", image, "-o", tmp_path / "x.pt")
    assert bad.returncode == 2 and "not_weights.pth" in bad.stderr
