"""The command line on a stand-in model: inputs, outputs, formats, refusals,
reports, errors, interrupts and the environment."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparsr import cli, env, image

PYTHON_DIR = Path(cli.__file__).resolve().parents[1]


class Nearest:
    """The model contract with an exact upscale (nearest x2); counts calls."""

    scale = 2

    def __init__(self):
        self.calls = 0

    def process(self, rgb):
        self.calls += 1
        return np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)


def nearest(a):
    return np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)


@pytest.fixture
def model(monkeypatch):
    m = Nearest()
    monkeypatch.setattr(cli, "_load_model", lambda args: m)
    return m


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def rgb(h=5, w=7, seed=0, channels=3):
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def save(path, a, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, **kw)
    return path


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im)


def opened(path, what):
    with Image.open(path) as im:
        return getattr(im, what)


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --- inputs and outputs -------------------------------------------------------

def test_one_file(tmp_path, capsys, model):
    a = rgb()
    src = save(tmp_path / "in.png", a)
    code, out, err = run(capsys, "upscale", src, "-o", tmp_path / "out.png", "-m", "x")
    assert code == 0, err
    np.testing.assert_array_equal(pixels(tmp_path / "out.png"), nearest(a))
    assert "in.png 7x5 ->" in out and "14x10" in out
    assert err == ""   # not a terminal: no progress bar


def test_directory_input_keeps_relative_paths(tmp_path, capsys, model):
    frames = tmp_path / "frames"
    save(frames / "a.png", rgb(seed=1))
    save(frames / "sub" / "b.jpg", rgb(seed=2))
    (frames / "notes.txt").write_text("not an image")
    (frames / ".hidden.png").write_bytes(b"")
    out = tmp_path / "out"
    # today's complaint: `sparsr upscale DIR -o out/`
    code, _, err = run(capsys, "upscale", frames, "-o", f"{out}/", "-m", "x")
    assert code == 0, err
    assert listing(out) == ["a.png"]
    code, _, err = run(capsys, "upscale", frames, "-o", out, "-m", "x", "--recursive", "--force")
    assert code == 0, err
    assert listing(out) == ["a.png", "sub/b.jpg"]
    with Image.open(out / "sub" / "b.jpg") as im:
        assert im.size == (14, 10)


def test_glob_input(tmp_path, capsys, model):
    for name in ("f1.png", "f2.png", "g.png"):
        save(tmp_path / "in" / name, rgb())
    code, _, err = run(capsys, "upscale", str(tmp_path / "in" / "f*.png"), "-o",
                       tmp_path / "out", "-m", "x")
    assert code == 0, err
    assert listing(tmp_path / "out") == ["f1.png", "f2.png"]
    code, _, err = run(capsys, "upscale", str(tmp_path / "in" / "z*.png"), "-o",
                       tmp_path / "o2", "-m", "x")
    assert code == 2 and "no files match" in err


def test_format_suffix_outscale_quality(tmp_path, capsys, model):
    a = rgb(20, 24, seed=4)
    src = save(tmp_path / "in" / "pic.png", a)
    out = tmp_path / "out"
    code, _, err = run(capsys, "upscale", tmp_path / "in", "-o", out, "-m", "x",
                       "--format", "webp", "--suffix", "x3", "-s", "3")
    assert code == 0, err
    with Image.open(out / "pic_x3.webp") as im:
        assert im.format == "WEBP" and im.size == (72, 60)
    run(capsys, "upscale", src, "-o", out / "q95.jpg", "-m", "x")
    run(capsys, "upscale", src, "-o", out / "q10.jpg", "-m", "x", "--quality", "10")
    assert (out / "q10.jpg").stat().st_size < (out / "q95.jpg").stat().st_size
    for level in ("0", "9"):
        code, _, err = run(capsys, "upscale", src, "-o", out / f"c{level}.png", "-m", "x",
                           "--compression", level)
        assert code == 0, err
    assert (out / "c9.png").stat().st_size < (out / "c0.png").stat().st_size
    with Image.open(out / "c9.png") as a, Image.open(out / "c0.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(SystemExit) as stop:
        cli.main(["upscale", str(src), "-o", str(out / "c.png"), "-m", "x", "--compression", "10"])
    assert stop.value.code == 2
    assert "--compression must be a deflate level 0..9" in capsys.readouterr().err
    code, _, err = run(capsys, "upscale", src, "-o", out / "t.tiff", "-m", "x")
    assert code == 0 and opened(out / "t.tiff", "format") == "TIFF"
    # an explicit file name and --format must agree
    code, _, err = run(capsys, "upscale", src, "-o", out / "z.png", "-m", "x", "--format", "jpg")
    assert code == 2 and "extension says PNG" in err
    code, _, err = run(capsys, "upscale", src, "-o", out / "noext", "-m", "x")
    assert code == 2 and "unknown image file extension" in err


def test_16bit_png_in_gives_16bit_png_out(tmp_path, capsys, model):
    a = np.random.default_rng(5).integers(0, 65536, (4, 6, 3)).astype(np.uint16)
    a[0, 0] = (1, 2, 3)
    src = tmp_path / "deep.png"
    with open(src, "wb") as f:
        image.write(f, a, "PNG")
    code, _, err = run(capsys, "upscale", src, "-o", tmp_path / "big.png", "-m", "x")
    assert code == 0, err
    np.testing.assert_array_equal(image.read(str(tmp_path / "big.png")), nearest(a))


def test_alpha_and_jpeg_refused_before_any_work(tmp_path, capsys, model):
    rgba = rgb(channels=4)
    src = save(tmp_path / "logo.png", rgba)
    code, _, err = run(capsys, "upscale", src, "-o", tmp_path / "logo.jpg", "-m", "x")
    assert code == 2 and "logo.png has an alpha channel" in err
    assert "--format png" in err and "--alpha drop" in err
    assert model.calls == 0 and not (tmp_path / "logo.jpg").exists()
    # in a batch too: the refusal comes before the first image
    save(tmp_path / "in" / "a.png", rgb())
    save(tmp_path / "in" / "b.png", rgba)
    code, _, err = run(capsys, "upscale", tmp_path / "in", "-o", tmp_path / "out", "-m", "x",
                       "--format", "jpg")
    assert code == 2 and "b.png has an alpha channel" in err
    assert model.calls == 0 and not (tmp_path / "out").exists()
    code, _, err = run(capsys, "upscale", src, "-o", tmp_path / "logo.jpg", "-m", "x",
                       "--alpha", "drop")
    assert code == 0, err
    assert opened(tmp_path / "logo.jpg", "mode") == "RGB"
    code, _, err = run(capsys, "upscale", src, "-o", tmp_path / "logo2.png", "-m", "x",
                       "--alpha", "bicubic")
    assert code == 0 and opened(tmp_path / "logo2.png", "mode") == "RGBA"


def test_json_report_and_quiet(tmp_path, capsys, model):
    save(tmp_path / "in" / "a.png", rgb(4, 6))
    save(tmp_path / "in" / "b.png", rgb(3, 5))
    code, out, err = run(capsys, "upscale", tmp_path / "in", "-o", tmp_path / "out", "-m", "x",
                         "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [r["size_in"] for r in report["images"]] == [[6, 4], [5, 3]]
    assert [r["size_out"] for r in report["images"]] == [[12, 8], [10, 6]]
    first = report["images"][0]
    assert first["input"].endswith("a.png")
    assert first["output"].endswith(os.path.join("out", "a.png"))
    assert first["seconds"] >= 0 and report["failed"] == []
    code, out, err = run(capsys, "upscale", tmp_path / "in", "-o", tmp_path / "out", "-m", "x",
                         "--force", "--quiet")
    assert code == 0 and out == "" and err == ""


def test_progress_bar_draws_share_and_eta():
    stream = io.StringIO()
    jobs = [cli.Job("a.png", "o/a.png", "PNG", size=(10, 10)),
            cli.Job("b.png", "o/b.png", "PNG", size=(30, 10))]
    bar = cli._ProgressBar(jobs, enabled=True, stream=stream)
    bar.begin(0, "a.png")
    bar.image_progress(100, 100)
    bar.end()
    bar.begin(1, "b.png")
    bar.image_progress(300, 300)
    text = stream.getvalue()
    assert "25%" in text and "100%" in text and "ETA" in text and "2/2" in text
    silent = io.StringIO()
    bar = cli._ProgressBar(jobs, enabled=False, stream=silent)
    bar.begin(0, "a.png")
    bar.image_progress(1, 1)
    assert silent.getvalue() == ""


def test_buffers_released_between_sizes(tmp_path, capsys, model, monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "_release_buffers", lambda: calls.append(1))
    save(tmp_path / "in" / "a.png", rgb(4, 4))
    save(tmp_path / "in" / "b.png", rgb(4, 4))
    save(tmp_path / "in" / "c.png", rgb(5, 4))
    assert run(capsys, "upscale", tmp_path / "in", "-o", tmp_path / "out", "-m", "x")[0] == 0
    assert len(calls) == 1   # only when the size changes


# --- refusals and errors -------------------------------------------------------

def test_refusals(tmp_path, capsys, model):
    src = save(tmp_path / "in.png", rgb())
    dst = tmp_path / "out.png"
    assert run(capsys, "upscale", src, "-o", dst, "-m", "x")[0] == 0
    code, _, err = run(capsys, "upscale", src, "-o", dst, "-m", "x")
    assert code == 2 and "exists (pass --force" in err
    code, _, err = run(capsys, "upscale", src, "-o", src, "-m", "x", "--force")
    assert code == 2 and "overwrite the input" in err
    code, _, err = run(capsys, "upscale", tmp_path / "missing", "-o", tmp_path / "o/", "-m", "x")
    assert code == 2 and "missing: no such file or directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "upscale", tmp_path / "empty", "-o", tmp_path / "o/", "-m", "x")
    assert code == 2 and "no image files" in err
    assert model.calls == 1


def test_corrupt_and_unsupported_images_are_named(tmp_path, capsys, model):
    bad = tmp_path / "in" / "bad.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    Image.new("F", (4, 4)).save(tmp_path / "in" / "float.tif")
    save(tmp_path / "in" / "good.png", rgb())
    code, out, err = run(capsys, "upscale", tmp_path / "in", "-o", tmp_path / "out", "-m", "x")
    assert code == 2
    assert "bad.png" in err and "float.tif: PIL image mode 'F' is not supported" in err
    assert "2 of 3 images failed" in err and "Traceback" not in err
    assert listing(tmp_path / "out") == ["good.png"]
    code, _, err = run(capsys, "upscale", bad, "-o", tmp_path / "one.png", "-m", "x")
    assert code == 2 and "bad.png" in err and not (tmp_path / "one.png").exists()


def test_no_space_left_stops_the_batch_and_corrupts_nothing(tmp_path, capsys, model,
                                                            monkeypatch):
    for name in ("a.png", "b.png", "c.png"):
        save(tmp_path / "in" / name, rgb())
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"previous")
    real_write = image.write
    written = []

    def full_disk(f, *a, **kw):
        if written:
            f.write(b"half a fi")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(1)
        real_write(f, *a, **kw)

    monkeypatch.setattr(image, "write", full_disk)
    code, _, err = run(capsys, "upscale", tmp_path / "in", "-o", out, "-m", "x", "--force")
    assert code == 2 and "cannot write" in err and "b.png" in err
    assert "No space left on device" in err
    assert listing(out) == ["a.png", "b.png"]      # c.png never tried, no temporary files
    assert (out / "b.png").read_bytes() == b"previous"


def test_force_keeps_mode_and_group(tmp_path, capsys, model):
    src = save(tmp_path / "in.png", rgb())
    dst = tmp_path / "out.png"
    dst.write_bytes(b"old")
    os.chmod(dst, 0o640)
    other_group = 4242
    if os.geteuid() == 0:
        os.chown(dst, -1, other_group)
    assert run(capsys, "upscale", src, "-o", dst, "-m", "x", "--force")[0] == 0
    st = dst.stat()
    assert st.st_mode & 0o7777 == 0o640
    if os.geteuid() == 0:
        assert st.st_gid == other_group
    assert pixels(dst).shape == (10, 14, 3)


def test_new_files_follow_the_umask(tmp_path):
    from sparsr.checkpoint import write_atomically

    old = os.umask(0o027)
    try:
        write_atomically(tmp_path / "new.bin", lambda f: f.write(b"x"))
        assert os.umask(0o027) == 0o027   # the umask was not changed meanwhile
    finally:
        os.umask(old)
    assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o640


# --- models, threads, the environment ----------------------------------------

def test_models_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPARSR_MODELS", str(tmp_path))
    (tmp_path / "smsr_x2.pt").write_bytes(b"\0" * 3_000_000)
    (tmp_path / "tiny.pt").write_bytes(b"\0" * 10)
    code, out, _ = run(capsys, "models")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("smsr_x2") and "3.0 MB" in lines[0] and lines[1].startswith("tiny")
    code, out, _ = run(capsys, "models", "--json")
    assert json.loads(out)[0] == {"name": "smsr_x2", "bytes": 3_000_000,
                                  "path": str(tmp_path / "smsr_x2.pt")}
    assert cli._resolve_model("smsr_x2") == str(tmp_path / "smsr_x2.pt")
    assert cli._resolve_model("tiny.pt") == str(tmp_path / "tiny.pt")
    assert cli._resolve_model("some/path.pt") == "some/path.pt"
    with pytest.raises(cli.SparsrError, match=r"no model 'nope'.*smsr_x2, tiny"):
        cli._resolve_model("nope")
    monkeypatch.setenv("SPARSR_MODELS", str(tmp_path / "none"))
    code, out, err = run(capsys, "models")
    assert code == 0 and out == "" and "does not exist" in err
    monkeypatch.delenv("SPARSR_MODELS")
    assert env.models_dir() == Path.home() / ".cache" / "sparsr"


def test_threads_option(tmp_path, capsys, model, monkeypatch):
    import sparsr

    seen = []
    monkeypatch.setattr(sparsr, "set_num_threads", seen.append)
    src = save(tmp_path / "in.png", rgb())
    assert run(capsys, "upscale", src, "-o", tmp_path / "o.png", "-m", "x", "--threads", 3)[0] == 0
    assert seen == [3]
    with pytest.raises(SystemExit):
        cli.main(["upscale", str(src), "-o", "x.png", "-m", "x", "--threads", "0"])
    assert "--threads must be a number > 0" in capsys.readouterr().err


def cli_process(*args, env_extra=None, **kw):
    environ = dict(os.environ, PYTHONPATH=str(PYTHON_DIR), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "sparsr.cli", *map(str, args)],
                          capture_output=True, text=True, env=environ, **kw)


@pytest.mark.parametrize("name, value", [("SPARSR_NUM_THREADS", "abc"),
                                         ("SPARSR_NUM_THREADS", "0"),
                                         ("SPARSR_NUM_THREADS", "-3"),
                                         ("SPARSR_ISA", "foo")])
def test_bad_environment_is_a_clear_error(name, value):
    r = cli_process("cpu", env_extra={name: value})
    assert r.returncode == 2, r.stderr
    assert f"{name}={value!r}" in r.stderr and "Traceback" not in r.stderr
    # the API: importing works, the first use says what is wrong
    code = ("import sparsr\n"
            "try:\n    sparsr.load('x.pt')\n"
            "except sparsr.SparsrError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(PYTHON_DIR), **{name: value}))
    assert r.returncode == 0 and name in r.stdout, r.stderr


def test_good_thread_count_is_applied():
    r = cli_process("cpu", env_extra={"SPARSR_NUM_THREADS": "1"})
    assert r.returncode == 0 and "threads: 1" in r.stdout


def test_version_and_closed_pipe(tmp_path):
    r = cli_process("--version")
    assert r.returncode == 0 and r.stdout.startswith("sparsr ")
    models = tmp_path / "models"
    models.mkdir()
    for i in range(2000):   # more output than a pipe buffer holds
        (models / f"model_{i:04d}.pt").write_bytes(b"")
    environ = dict(os.environ, PYTHONPATH=str(PYTHON_DIR), SPARSR_MODELS=str(models))
    r = subprocess.run(f"{sys.executable} -m sparsr.cli models --json | head -1",
                       shell=True, capture_output=True, text=True, env=environ)
    assert r.stdout == "[\n" and "Traceback" not in r.stderr and "Broken" not in r.stderr
    p = subprocess.Popen([sys.executable, "-m", "sparsr.cli", "models", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ)
    p.stdout.close()   # the reader is gone before anything is printed
    _, err = p.communicate(timeout=60)
    assert p.returncode == 141 and "Traceback" not in err.decode()


# --- interrupts ---------------------------------------------------------------

INTERRUPTIBLE = textwrap.dedent("""
    import hashlib, signal, sys, time, numpy as np
    from pathlib import Path
    from sparsr import cli, image
    # Ctrl-C as on a terminal, even when this test runs from a background job
    # (which starts its children with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    marker = Path(sys.argv[1])
    phase = sys.argv[2]

    class Slow:
        scale = 2
        def process(self, rgb):
            marker.write_text("processing")
            if phase == "process":
                # a long native call that never checks for signals, as the engine's
                hashlib.pbkdf2_hmac("sha256", b"x", b"y", 50_000_000)
            return np.repeat(np.repeat(rgb, 2, 0), 2, 1)

    cli._load_model = lambda args: Slow()
    real_write = image.write
    def slow_write(f, *a, **kw):
        real_write(f, *a, **kw)
        if phase == "write":
            f.flush()
            marker.write_text("writing")
            time.sleep(60)
    image.write = slow_write
    sys.exit(cli.main(sys.argv[3:]))
""")


@pytest.mark.parametrize("phase, sig, code", [("process", signal.SIGINT, 130),
                                              ("write", signal.SIGINT, 130),
                                              ("write", signal.SIGTERM, 143)])
def test_interrupt_leaves_no_output(tmp_path, phase, sig, code):
    src = save(tmp_path / "in.png", rgb())
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "marker"
    script = tmp_path / "run.py"
    script.write_text(INTERRUPTIBLE)
    p = subprocess.Popen([sys.executable, str(script), str(marker), phase, "upscale", str(src),
                          "-o", str(out / "big.png"), "-m", "x"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, PYTHONPATH=str(PYTHON_DIR)))
    deadline = time.monotonic() + 30
    expected = "processing" if phase == "process" else "writing"
    while not (marker.exists() and marker.read_text() == expected):
        if time.monotonic() > deadline or p.poll() is not None:
            p.kill()
            pytest.fail(p.communicate()[1].decode())
        time.sleep(0.02)
    if phase == "write":
        assert any(out.iterdir())   # the temporary file is there
    sent = time.monotonic()
    p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"still running 10 s after signal {sig}")
    err = err.decode()
    rc = p.returncode
    assert time.monotonic() - sent < 1.5
    assert rc == code, err
    assert "Traceback" not in err
    assert list(out.iterdir()) == []   # no output, no temporary file


def test_info_json_into_head_exits_cleanly(smsr_checkpoint):
    environ = dict(os.environ, PYTHONPATH=str(PYTHON_DIR))
    r = subprocess.run(f"{sys.executable} -m sparsr.cli info --json {smsr_checkpoint} | head -1",
                       shell=True, capture_output=True, text=True, env=environ)
    assert r.stdout == "{\n" and "Traceback" not in r.stderr and "Broken" not in r.stderr


def test_real_model_by_name(tmp_path, smsr_checkpoint, capsys, monkeypatch):
    monkeypatch.setenv("SPARSR_MODELS", str(smsr_checkpoint.parent))
    a = rgb(9, 11)
    src = save(tmp_path / "in.png", a)
    code, _, err = run(capsys, "upscale", src, "-o", tmp_path / "out.png", "-m",
                       smsr_checkpoint.stem)
    assert code == 0, err
    assert pixels(tmp_path / "out.png").shape == (18, 22, 3)
