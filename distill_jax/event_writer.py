"""TensorBoard event files without TensorFlow: scalars and hparams, readable by TensorBoard.

An event file is a sequence of records (TFRecord framing: uint64 length, masked CRC-32C of the
length, the bytes, masked CRC-32C of the bytes), each a serialized `tensorboard.Event` protobuf.
The few messages needed are encoded here by hand (field numbers from tensorboard's event.proto,
summary.proto, tensor.proto and plugins/hparams/plugin_data.proto), so writing needs neither
TensorFlow nor tensorboard nor protobuf; reading is TensorBoard's own job.

Scalars are written as `Summary.Value.simple_value` (float32), the form TensorBoard's
`EventAccumulator(path).Scalars(tag)` and tbparse's `SummaryReader(path).scalars` return directly
(TF2 tensor summaries, which clu's TF writer produced, show up only under `.Tensors(tag)`).
Hyperparameters are one hparams-plugin `session_start_info` summary (TensorBoard's HPARAMS tab).

Local directories are appended to and flushed on `flush()`; remote ones (gs://...) cannot be
appended to, so the file is rewritten whole at most every `remote_flush_s` seconds and on
`flush()`/`close()`, and a new file is started once one holds `remote_file_bytes`.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Mapping

from etils import epath

# ---------------------------------------------------------------- CRC-32C (Castagnoli)

_CRC_TABLE = []
for _byte in range(256):
    _crc = _byte
    for _ in range(8):
        _crc = (_crc >> 1) ^ 0x82F63B78 if _crc & 1 else _crc >> 1
    _CRC_TABLE.append(_crc)


def crc32c(data: bytes) -> int:
    """CRC-32C of `data` (the checksum TFRecord framing uses)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits and add a constant (mod 2^32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, the data's masked CRC."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", masked_crc32c(length)) + data
            + struct.pack("<I", masked_crc32c(data)))


# ---------------------------------------------------------------- protobuf wire format

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s as two's complement, as protobuf does
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _field_double(number: int, value: float) -> bytes:
    return _varint(number << 3 | 1) + struct.pack("<d", value)


def _field_float(number: int, value: float) -> bytes:
    return _varint(number << 3 | 5) + struct.pack("<f", value)


def _field_bytes(number: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _event(wall_time: float, step: int, *, summary_values: list[bytes] = (),
           file_version: str | None = None) -> bytes:
    """Event{wall_time=1 double, step=2 int64, file_version=3, summary=5 {value=1 repeated}}."""
    out = _field_double(1, wall_time) + _field_varint(2, step)
    if file_version is not None:
        out += _field_bytes(3, file_version)
    if summary_values:
        out += _field_bytes(5, b"".join(_field_bytes(1, v) for v in summary_values))
    return out


def scalar_value(tag: str, value: float) -> bytes:
    """Summary.Value{tag=1, simple_value=2 (float32)}."""
    return _field_bytes(1, tag) + _field_float(2, float(value))


def _struct_value(value) -> bytes:
    """google.protobuf.Value: number_value=2 (double), string_value=3, bool_value=4."""
    if isinstance(value, bool):
        return _field_varint(4, int(value))
    if isinstance(value, (int, float)):
        return _field_double(2, float(value))
    return _field_bytes(3, str(value))


def hparams_value(hparams: Mapping[str, bool | int | float | str], start_time: float) -> bytes:
    """Summary.Value of the hparams plugin's session start (what tensorboard.plugins.hparams
    `hp.hparams(...)` writes): tag '_hparams_/session_start_info', metadata.plugin_data =
    {plugin_name 'hparams', content HParamsPluginData{session_start_info=3 {hparams=1 map,
    start_time_secs=5}}}, and an empty float tensor."""
    entries = b"".join(_field_bytes(1, _field_bytes(1, str(k)) + _field_bytes(2, _struct_value(v)))
                       for k, v in sorted(hparams.items()))
    session_start = entries + _field_double(5, start_time)
    content = _field_bytes(3, session_start)                       # version 0 is the default
    plugin_data = _field_bytes(1, "hparams") + _field_bytes(2, content)
    metadata = _field_bytes(1, plugin_data)
    # TensorProto{dtype=1 DT_FLOAT(1), tensor_shape=2 {dim=2 [{size=0}]}}
    empty_tensor = _field_varint(1, 1) + _field_bytes(2, _field_bytes(2, b""))
    return (_field_bytes(1, "_hparams_/session_start_info") + _field_bytes(8, empty_tensor)
            + _field_bytes(9, metadata))


# ---------------------------------------------------------------- the writer

class EventWriter:
    """Writes scalars/hparams into `logdir`/events.out.tfevents.<time>.<host>.<pid>.<n>.

    The interface is the one the trainer used from clu's metric writers: write_scalars(step,
    {tag: float}), write_hparams({name: value}), flush(), close(). `logdir=None`: drops everything
    (the non-zero processes of a multi-host job).
    """

    def __init__(self, logdir: str | os.PathLike | None, *, remote_flush_s: float = 60.0,
                 remote_file_bytes: int = 4 << 20):
        self._logdir = None if logdir is None else epath.Path(logdir)
        self._remote = logdir is not None and "://" in os.fspath(logdir)
        self._remote_flush_s, self._remote_file_bytes = remote_flush_s, remote_file_bytes
        self._file_index = 0
        self._file = None
        self._buffer = bytearray()      # remote: the current file's whole content
        self._last_upload = time.monotonic()
        if self._logdir is not None:
            self._logdir.mkdir(parents=True, exist_ok=True)
            self._new_file()

    def _new_file(self) -> None:
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{self._file_index}")
        self._file_index += 1
        self._path = self._logdir / name
        if self._remote:
            self._buffer = bytearray()
        else:
            if self._file is not None:
                self._file.close()
            self._file = open(self._path, "ab")
        self._append(_event(time.time(), 0, file_version="brain.Event:2"))

    def _append(self, event: bytes) -> None:
        data = record(event)
        if self._remote:
            self._buffer += data
        else:
            self._file.write(data)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """One event per call: every (tag, value) as a float32 simple_value at `step`."""
        if self._logdir is None or not scalars:
            return
        values = [scalar_value(tag, float(value)) for tag, value in scalars.items()]
        self._append(_event(time.time(), int(step), summary_values=values))
        self._maybe_upload()

    def write_hparams(self, hparams: Mapping[str, bool | int | float | str]) -> None:
        """The run's hyperparameters (flat {name: bool/int/float/str}) for TensorBoard's HPARAMS tab."""
        if self._logdir is None:
            return
        now = time.time()
        self._append(_event(now, 0, summary_values=[hparams_value(hparams, now)]))
        self._maybe_upload()

    def _maybe_upload(self) -> None:
        if self._remote and time.monotonic() - self._last_upload >= self._remote_flush_s:
            self.flush()

    def flush(self) -> None:
        if self._logdir is None:
            return
        if self._remote:
            self._path.write_bytes(bytes(self._buffer))
            self._last_upload = time.monotonic()
            if len(self._buffer) >= self._remote_file_bytes:
                self._new_file()
        else:
            self._file.flush()

    def close(self) -> None:
        if self._logdir is None:
            return
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
        self._logdir = None

    @property
    def path(self) -> str | None:
        """The event file being written (None for a dropping writer)."""
        return None if self._logdir is None else os.fspath(self._path)
