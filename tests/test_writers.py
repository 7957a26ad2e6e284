"""TensorBoard event files written with google-crc32c's checksums, and by the training thread where they are local,
read back through TensorBoard's own checks."""

import os

from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_masked_crc32c
from tensorboard.summary.writer import record_writer
from torch.utils.tensorboard import SummaryWriter

from hooktrain import writers
from hooktrain.writers import CSVWriter, DirectRecordWriter, TensorBoardWriter, masked_crc32c, use_fast_event_files, writers_for
from test_train import read_events


def test_fast_checksums_equal_tensorboards_own():
    for size in (0, 1, 7, 8, 1000, 2048):
        data = os.urandom(size)
        assert masked_crc32c(data) == tensorboard_masked_crc32c(data), size


def test_a_writer_puts_fast_checksums_in_place_and_tensorboard_reads_its_events(tmp_path):
    writer = TensorBoardWriter(tmp_path)
    assert record_writer.masked_crc32c is masked_crc32c
    writer.write_scalars({"watch/p/loss": 0.5}, step=3)
    writer.write_histogram("watch/p/grad", [-1.0, 1.0, 4.0, 0.0, 2.0, 2.0, 0.0, 0.0, 2.0], step=3)
    writer.flush()
    events = read_events(tmp_path)  # TensorBoard's reader checks each record's checksums, in pure Python
    assert [(event.step, event.value) for event in events.Scalars("watch/p/loss")] == [(3, 0.5)]
    histogram = events.Histograms("watch/p/grad")[0].histogram_value
    assert (histogram.min, histogram.max, histogram.num, histogram.sum, histogram.sum_squares) == (-1.0, 1.0, 4.0, 0.0, 2.0)
    assert list(histogram.bucket_limit) == [-0.5, 0.0, 0.5, 1.0]  # each bucket's right edge: 4 equal buckets over [-1, 1]
    assert list(histogram.bucket) == [2.0, 0.0, 0.0, 2.0]


def test_local_event_files_are_written_by_the_training_thread_and_hold_each_event_at_once(tmp_path):
    writer = TensorBoardWriter(tmp_path)
    assert isinstance(writer.experiment._get_file_writer().event_writer._async_writer, DirectRecordWriter)
    writer.write_scalars({"watch/p/loss": 0.5}, step=3)
    writer.experiment.add_scalar("train/loss", 0.25, global_step=4)
    events = read_events(tmp_path)  # no flush: each record is in the file when its call returns
    assert [(event.step, event.value) for event in events.Scalars("watch/p/loss")] == [(3, 0.5)]
    assert [(event.step, event.value) for event in events.Scalars("train/loss")] == [(4, 0.25)]
    writer.experiment.close()


def test_remote_event_files_keep_tensorboards_writer_thread():
    use_fast_event_files()
    writer = SummaryWriter("memory://hooktrain-test/run")  # fsspec's in-memory file system stands for S3 or GCS
    assert type(writer._get_file_writer().event_writer._async_writer) is writers._ASYNC_WRITER
    writer.add_scalar("train/loss", 0.25, global_step=4)
    writer.close()
    events = read_events("memory://hooktrain-test/run")
    assert [(event.step, event.value) for event in events.Scalars("train/loss")] == [(4, 0.25)]


def test_a_tensorboard_loggers_prefix_goes_before_every_tag(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="", version="", prefix="fold1")
    [writer] = writers_for([logger])
    writer.write_scalars({"watch/p/loss": 0.5}, step=3)
    writer.flush()
    assert read_events(logger.log_dir).Tags()["scalars"] == ["fold1-watch/p/loss"]  # Lightning's own join character


def test_a_csv_file_keeps_the_rows_of_the_run_it_resumes(tmp_path):
    CSVWriter(tmp_path / "stats.csv").write_scalars({"watch/p/loss": 1.0}, step=1)
    CSVWriter(tmp_path / "stats.csv").write_scalars({"watch/p/loss": 0.5}, step=2)  # the resumed run's writer
    assert (tmp_path / "stats.csv").read_text().splitlines() == ["step,tag,value", "1,watch/p/loss,1.0", "2,watch/p/loss,0.5"]
