"""distill_jax/event_writer.py, TensorBoard event files without TensorFlow, read back by the
readers users use: TensorBoard's EventAccumulator, its hparams plugin protos, and tbparse."""

import math

import numpy as np
import pytest

from distill_jax.event_writer import EventWriter, crc32c, masked_crc32c

STEPS = (1, 20, 40)


def _write(logdir):
    writer = EventWriter(logdir)
    writer.write_hparams({"total_steps": 40, "optim.learning_rate": 5e-4, "teacher.name": "t",
                          "export": True})
    for step in STEPS:
        writer.write_scalars(step, {"loss": 1.0 / step, "loss/minilmv2/qq": 0.5 / step,
                                    "learning_rate": 1e-4 * step, "perf/mfu": 0.25})
    writer.close()
    return writer


def test_crc32c_matches_the_standard_check_value_and_tensorboards_mask():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tb_masked

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720, B.4)
    for data in (b"", b"\x00" * 8, bytes(range(256)) * 3):
        assert masked_crc32c(data) == tb_masked(data)


def test_event_accumulator_reads_scalars_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _write(tmp_path)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["learning_rate", "loss", "loss/minilmv2/qq", "perf/mfu"]
    events = acc.Scalars("loss")
    assert [e.step for e in events] == list(STEPS)
    np.testing.assert_allclose([e.value for e in events], [1.0 / s for s in STEPS], rtol=1e-7)
    assert [e.value for e in acc.Scalars("learning_rate")] == pytest.approx([1e-4 * s for s in STEPS])

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["total_steps"].number_value == 40
    assert math.isclose(start.hparams["optim.learning_rate"].number_value, 5e-4)
    assert start.hparams["teacher.name"].string_value == "t"
    assert start.hparams["export"].bool_value is True


def test_tbparse_reads_the_scalars(tmp_path):
    from tbparse import SummaryReader

    _write(tmp_path)
    frame = SummaryReader(str(tmp_path)).scalars
    loss = frame[frame.tag == "loss"].sort_values("step")
    assert list(loss.step) == list(STEPS)
    np.testing.assert_allclose(loss.value, [1.0 / s for s in STEPS], rtol=1e-7)


def test_a_dropping_writer_writes_nothing(tmp_path):
    writer = EventWriter(None)
    writer.write_scalars(1, {"loss": 1.0})
    writer.write_hparams({"a": 1})
    writer.close()
    assert writer.path is None and not list(tmp_path.iterdir())


def test_a_gs_logdir_is_rewritten_whole_and_reads_back(tmp_path):
    """gs:// objects cannot be appended to: the writer uploads the whole file (on flush, and at
    most every remote_flush_s), and EventAccumulator reads the uploaded copy."""
    from fake_gcs import fake_gcs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with fake_gcs(str(tmp_path / "root")) as root:
        writer = EventWriter("gs://bucket/run/tensorboard", remote_flush_s=3600)
        writer.write_scalars(1, {"loss": 2.0})
        local = tmp_path / "root" / "bucket" / "run" / "tensorboard"
        assert not list(local.glob("events.out.tfevents.*"))  # not yet uploaded
        writer.write_scalars(2, {"loss": 1.0})
        writer.close()
    acc = EventAccumulator(str(local))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 2.0), (2, 1.0)]
