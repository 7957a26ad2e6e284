"""Where a session's statistics go: TensorBoard event files, a CSV file, or any Lightning/Fabric logger.

A writer takes host values (the session copies everything to the host once per logging step).
Every private TensorBoard or Lightning call of hooktrain lives in this file.
"""

import csv
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.tensorflow_stub.io.gfile import LocalFileSystem
from tensorboard.summary.writer import event_file_writer, record_writer
from torch import Tensor

try:
    import google_crc32c
except ImportError:  # a dependency, but TensorBoard writes correct files without it
    google_crc32c = None

_ASYNC_WRITER = event_file_writer._AsyncWriter  # TensorBoard's writer thread, kept for remote files


class Writer:
    """Base class: each method is a no-op, so a writer implements what its medium can show."""

    def write_scalars(self, scalars: dict[str, float], step: int) -> None:
        """Called with every scalar of one logging step."""

    def write_histogram(self, tag: str, summary: list[float], step: int) -> None:
        """Called with ``[min, max, count, sum, sum of squares, *bucket counts]`` (equal buckets over [min, max])."""

    def write_image(self, tag: str, image: Tensor, step: int) -> None:
        """Called with a ``(H, W)`` or ``(3, H, W)`` host tensor of values in [0, 1]."""

    def write_layout(self, layout: dict[str, dict[str, list]]) -> None:
        """Called once with TensorBoard's custom-scalars layout: one chart per statistic, a line per module."""

    def flush(self) -> None:
        """Called when the session closes."""


class TensorBoardWriter(Writer):
    """Scalars, histograms, images and the custom-scalars layout into TensorBoard event files.

    Args:
        log_dir: a folder for a new ``SummaryWriter``; or
        summary_writer: an existing one (a Lightning ``TensorBoardLogger``'s ``experiment``).
        prefix: put before every tag (Lightning's logger ``prefix``).
    """

    def __init__(self, log_dir: str | Path | None = None, summary_writer: Any = None, prefix: str = "") -> None:
        use_fast_event_files()
        if summary_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            summary_writer = SummaryWriter(str(log_dir), max_queue=100)
        self.experiment = summary_writer
        self.prefix = prefix

    def write_scalars(self, scalars: dict[str, float], step: int) -> None:
        """All of a step's scalars as one event: 30 scalars take 26 us, against 190 us as 30 ``add_scalar`` events
        (each a NumPy conversion, an event and a record; 2026-11-24)."""
        values = [Summary.Value(tag=self.prefix + tag, simple_value=value) for tag, value in scalars.items()]
        self.experiment._get_file_writer().add_summary(Summary(value=values), step)

    def write_histogram(self, tag: str, summary: list[float], step: int) -> None:
        low, high, count, total, squares, *counts = summary
        width = (high - low) / len(counts)
        limits = [low + width * (i + 1) for i in range(len(counts))]
        self.experiment.add_histogram_raw(self.prefix + tag, low, high, count, total, squares, limits, counts, global_step=step)

    def write_image(self, tag: str, image: Tensor, step: int) -> None:
        self.experiment.add_image(self.prefix + tag, image, global_step=step, dataformats="CHW" if image.dim() == 3 else "HW")

    def write_layout(self, layout: dict[str, dict[str, list]]) -> None:
        self.experiment.add_custom_scalars(layout)

    def write_hparams(self, settings: dict[str, object], metric_tags: list[str], shown: list[str] = ()) -> None:
        """The HParams tab's row for this run: its settings, and the scalar tags whose last values are its metrics.

        ``shown`` are the settings TensorBoard ticks at first (it ticks five: those marked as differing, then the rest by
        name). Lightning's ``log_hyperparams(params, metrics)`` would log the metrics a second time (at step 0); these
        summaries alone let TensorBoard read them from the scalars already written.
        """
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
        from torch.utils.tensorboard.summary import hparams

        experiment, *session = hparams(settings, {tag: 0.0 for tag in metric_tags})
        plugin_data = experiment.value[0].metadata.plugin_data
        content = HParamsPluginData.FromString(plugin_data.content)
        for info in content.experiment.hparam_infos:
            info.differs = info.name in shown
        plugin_data.content = content.SerializeToString()
        for summary in experiment, *session:
            self.experiment._get_file_writer().add_summary(summary)

    def flush(self) -> None:
        self.experiment.flush()


def use_fast_event_files() -> None:
    """TensorBoard event files with the same records at a fraction of TensorBoard's own cost: checksums in C
    (:func:`use_fast_checksums`) and local files written by the training thread (:class:`DirectRecordWriter`).
    Idempotent; called before any ``SummaryWriter`` is made (a logger makes its own at its first event)."""
    use_fast_checksums()
    event_file_writer._AsyncWriter = _record_writer


def _record_writer(framer: record_writer.RecordWriter, max_queue_size: int = 10, flush_secs: int = 120) -> Any:
    """What an ``EventFileWriter`` writes its records with: a :class:`DirectRecordWriter` for a local file,
    TensorBoard's writer thread for remote storage (S3, fsspec), where a write can take long."""
    file = framer._writer  # the GFile TensorBoard opened (nothing is written to it yet)
    if isinstance(file.fs, LocalFileSystem):
        return DirectRecordWriter(file.filename)
    return _ASYNC_WRITER(framer, max_queue_size, flush_secs)


class DirectRecordWriter(record_writer.RecordWriter):
    """Writes each event record to its local file in the calling thread, one ``write`` call on a file held open.

    Without TensorFlow, TensorBoard hands each record to a writer thread that opens the event file, appends
    the record and closes the file again, taking the GIL from training meanwhile: ``add_scalar`` took 40 us a
    record here once records came faster than the thread wrote them, 6 us written directly (2026-11-24). As
    durable: the record is in the file (a live TensorBoard sees it, a crash keeps it) when ``add_scalar``
    returns. Records are framed by TensorBoard's own :class:`RecordWriter`.
    """

    def __init__(self, path: bytes | str) -> None:
        super().__init__(open(path, "wb", buffering=0))


def use_fast_checksums() -> bool:
    """Every TensorBoard event file record carries a masked CRC-32C; without TensorFlow, TensorBoard computes it in pure
    Python (0.45 ms for a 2 KB histogram event) in its writer thread, which holds the GIL while training waits.
    google-crc32c's C code gives the same numbers in under a microsecond: a logging step of the MLP with the four
    logging plugins (a dozen histograms) took 7.5 ms extra before, 5.4 ms after (2026-11-23). Idempotent;
    returns whether the C code is in place (its pure-Python fallback would be no faster)."""
    if google_crc32c is None or google_crc32c.implementation != "c":
        return False
    record_writer.masked_crc32c = masked_crc32c
    return True


def masked_crc32c(data: bytes) -> int:
    """TensorBoard's ``masked_crc32c`` (its record format's rotation and offset of the CRC-32C), on google-crc32c."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class CSVWriter(Writer):
    """Scalars as rows ``step,tag,value`` of one CSV file (no histograms or images)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.write_text("step,tag,value\n")

    def write_scalars(self, scalars: dict[str, float], step: int) -> None:
        with self.path.open("a", newline="") as file:
            csv.writer(file).writerows((step, tag, value) for tag, value in scalars.items())


class LoggerWriter(Writer):
    """Scalars through any logger with ``log_metrics(metrics, step)`` (Lightning's and Fabric's loggers)."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def write_scalars(self, scalars: dict[str, float], step: int) -> None:
        self.logger.log_metrics(scalars, step=step)


def writers_for(loggers: list[Any]) -> list[Writer]:
    """A writer for each Lightning or Fabric logger: TensorBoard loggers get every kind of output."""
    writers: list[Writer] = []
    for logger in loggers:
        if _is_tensorboard_logger(logger):
            prefix = f"{logger._prefix}{logger.LOGGER_JOIN_CHAR}" if getattr(logger, "_prefix", "") else ""
            writers.append(TensorBoardWriter(summary_writer=logger.experiment, prefix=prefix))
        else:
            writers.append(LoggerWriter(logger))
    return writers


def _is_tensorboard_logger(logger: Any) -> bool:
    from lightning.fabric.loggers import TensorBoardLogger as FabricTensorBoardLogger
    from lightning.pytorch.loggers import TensorBoardLogger

    return isinstance(logger, (TensorBoardLogger, FabricTensorBoardLogger))
