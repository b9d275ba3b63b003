"""sparsr.importers.pth: reading PyTorch weights without unpickling code,
unwrapping training containers, recognising the architecture, choosing the
scale and writing a checkpoint."""

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="reading PyTorch weights needs torch")

from archs import checks  # noqa: E402
from archs.carn_m import CARNM  # noqa: E402
from archs.srvgg import SRVGGNetCompact  # noqa: E402

from sparsr import checkpoint  # noqa: E402
from sparsr.errors import CheckpointError  # noqa: E402
from sparsr.importers import pth  # noqa: E402


def small_srvgg():
    return {k: torch.from_numpy(v) for k, v in
            checks.random_state(SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2)).items()}


def save(tmp_path, obj, name="w.pth", **kwargs):
    path = tmp_path / name
    torch.save(obj, path, **kwargs)
    return path


def test_reads_a_plain_state_dict_as_numpy(tmp_path):
    sd = small_srvgg()
    got = pth.read_state_dict(save(tmp_path, sd))
    assert list(got) == list(sd)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in got.values())
    np.testing.assert_array_equal(got["body.0.weight"], sd["body.0.weight"].numpy())


def test_legacy_pickle_format_is_read(tmp_path):
    path = save(tmp_path, small_srvgg(), _use_new_zipfile_serialization=False)
    assert "body.0.weight" in pth.read_state_dict(path)


@pytest.mark.parametrize("wrap", [
    lambda sd: {"params": sd},
    lambda sd: {"state_dict": sd, "epoch": 7},
    lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
    lambda sd: {"params": {k: v * 0 for k, v in sd.items()}, "params_ema": sd},
    lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},
])
def test_containers_and_prefixes_are_unwrapped(tmp_path, wrap):
    sd = small_srvgg()
    got = pth.read_state_dict(save(tmp_path, wrap(sd)))
    assert set(got) == set(sd)
    # params_ema is preferred over params.
    np.testing.assert_array_equal(got["body.2.weight"], sd["body.2.weight"].numpy())


def test_non_tensors_and_batch_norm_counters_are_skipped(tmp_path):
    sd = dict(small_srvgg(), **{"bn.num_batches_tracked": torch.tensor(5), "note": "hello",
                                "half": torch.ones(2, dtype=torch.float16),
                                "bf16": torch.ones(2, dtype=torch.bfloat16)})
    got = pth.read_state_dict(save(tmp_path, sd))
    assert "bn.num_batches_tracked" not in got and "note" not in got
    assert got["half"].dtype == np.float32 and got["bf16"].dtype == np.float32


def test_a_pickled_model_is_refused_without_running_it(tmp_path):
    path = save(tmp_path, SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2))
    with pytest.raises(CheckpointError) as e:
        pth.read_state_dict(path)
    assert str(path) in str(e.value) and "state_dict()" in str(e.value)
    assert "SRVGGNetCompact" in str(e.value)


class Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('unpickled')",))


def test_a_hostile_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"x": Boom()}))
    with pytest.raises(CheckpointError, match="evil.pth"):
        pth.read_state_dict(path)


@pytest.mark.parametrize("content, words", [
    (b"not a torch file at all", "not a PyTorch weights file"),
    (b"PK\x03\x04garbage", "not a PyTorch weights file"),
    (b"", "empty or truncated"),
])
def test_foreign_files_are_refused_naming_the_file(tmp_path, content, words):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=words) as e:
        pth.read_state_dict(path)
    assert "x.pth" in str(e.value)


def test_missing_file_empty_dict_and_list_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth: no such file"):
        pth.read_state_dict(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="holds no tensors"):
        pth.read_state_dict(save(tmp_path, {"epoch": 3}))
    with pytest.raises(CheckpointError, match="expected a state_dict.*list"):
        pth.read_state_dict(save(tmp_path, [torch.ones(1)]))


def test_unknown_architecture_is_refused_with_keys_and_the_onnx_route():
    sd = {"encoder.0.weight": np.zeros((8, 3, 3, 3), np.float32),
          "encoder.0.bias": np.zeros(8, np.float32)}
    with pytest.raises(CheckpointError) as e:
        pth.detect(sd)
    message = str(e.value)
    assert "encoder.0.weight (8, 3, 3, 3)" in message
    assert "torch.onnx.export" in message and "tools/convert.py m.onnx -o m.pt" in message
    assert "carn_m" in message     # what sparsr does read


def test_convert_writes_a_checkpoint(tmp_path):
    src = save(tmp_path, {"params": small_srvgg()}, name="tiny_x2.pth")
    model = pth.convert(src, tmp_path / "tiny.pt")
    assert model["architecture"] == "srvgg" and model["io"]["scale"] == 2
    description, tensors, metadata = checkpoint.load(tmp_path / "tiny.pt")
    assert description == model
    assert metadata["source"] == "tiny_x2.pth" and metadata["scales_in_source"] == [2]
    assert metadata["scale_from"] == "weights"
    assert set(tensors) == set(small_srvgg())


def test_convert_refuses_a_scale_the_model_does_not_have(tmp_path):
    src = save(tmp_path, small_srvgg())
    with pytest.raises(CheckpointError, match=r"w.pth: srvgg weights have no x4 \(they have x2\)"):
        pth.convert(src, tmp_path / "out.pt", scale=4)
    assert not (tmp_path / "out.pt").exists()


def test_multi_scale_carn_m_needs_a_scale(tmp_path):
    src = save(tmp_path, checks.torch_state(checks.random_state(CARNM(feat=8, group=2))),
               name="carn.pth")
    with pytest.raises(CheckpointError, match=r"carn.pth: carn_m weights can run at x2, x3, x4"):
        pth.convert(src, tmp_path / "out.pt")
    model = pth.convert(src, tmp_path / "out.pt", scale=3)
    assert model["io"]["scale"] == 3
    tensors = checkpoint.load(tmp_path / "out.pt")[1]
    assert not any(k.startswith(("upsample.up2", "upsample.up4")) for k in tensors)


def test_scale_in_file_name():
    assert pth.scale_in_file_name("fsrcnn_x2_y.pth") == 2
    assert pth.scale_in_file_name("edsr_baseline_x4-6b446fab.pt") == 4
    assert pth.scale_in_file_name("x3.pth") == 3
    assert pth.scale_in_file_name("carn_m.pth") is None
    assert pth.scale_in_file_name("max2.pth") is None


def test_the_legacy_smsr_checkpoint_is_read(shared_dir):
    sd = pth.read_state_dict(shared_dir / "models" / "smsr_x2_official.pt")
    assert "body.0.body.ch_mask" in sd and "head.0.weight" in sd


def test_importing_the_importer_does_not_import_torch():
    import subprocess
    import sys
    code = ("import sys, sparsr.importers.pth, sparsr.importers.archs; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
