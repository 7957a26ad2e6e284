"""Data of one's own: MNIST-style IDX files, folders of images, tensor files; each written here, read and trained on."""

import gzip

import numpy as np
import pytest
import torch

from data_files import write_idx, write_idx_dataset, write_image_folder, write_tensor_file
from hooktrain import HooktrainError, train
from hooktrain.data import IDXDataModule, ImageFolderDataModule, TensorFileDataModule
from hooktrain.data.idx import read_idx


def test_idx_files_read_back_as_written(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28))
    write_idx(tmp_path / "x.gz", images)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), images)
    raw = gzip.open(tmp_path / "x.gz").read()
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(HooktrainError, match="cut short"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "text.gz").write_bytes(gzip.compress(b"hello world"))
    with pytest.raises(HooktrainError, match="is not an IDX file"):
        read_idx(tmp_path / "text.gz")


def test_idx_data_keeps_the_data_sets_own_test_split_and_normalizes_with_training_statistics(tmp_path):
    data = IDXDataModule(str(write_idx_dataset(tmp_path, train=60, test=20)), name="fashion_mnist", image_size=32, val_fraction=0.25)
    data.setup()
    assert {name: len(split) for name, split in data.splits.items()} == {"train": 45, "val": 15, "test": 20}
    test_images, test_labels = data.splits["test"].tensors
    assert test_images.shape == (20, 1, 32, 32) and test_labels.tolist() == [i % 10 for i in range(20)]  # the file's order
    train_images = data.splits["train"].tensors[0]
    assert train_images.mean().item() == pytest.approx(0.0, abs=1e-5) and train_images.std().item() == pytest.approx(1.0, abs=1e-4)


def test_idx_data_without_files_names_them_and_the_download_switch(tmp_path):
    with pytest.raises(HooktrainError, match=r"lacks train-images-idx3-ubyte.gz.*data.download=true"):
        IDXDataModule(str(tmp_path), name="mnist").setup()


@pytest.fixture
def idx_server(tmp_path):
    """The four IDX files served over HTTP on this machine, as a data set's mirror serves them: its URL."""
    import functools
    import http.server
    import threading

    class Mirror(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/cut/"):  # a transfer that stops a tenth of the way, as a dropped connection does
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(bytes(100))
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    served = write_idx_dataset(tmp_path / "mirror", train=30, test=10)
    handler = functools.partial(Mirror, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


def test_idx_data_downloads_missing_files_and_only_those(tmp_path, idx_server):
    data_dir = tmp_path / "mnist"
    write_idx_dataset(data_dir, train=30, test=10)
    (data_dir / "t10k-images-idx3-ubyte.gz").unlink()
    kept = (data_dir / "train-images-idx3-ubyte.gz").stat().st_mtime_ns
    data = IDXDataModule(str(data_dir), name="mnist", download=True, mirror=idx_server)
    data.prepare_data()
    assert (data_dir / "t10k-images-idx3-ubyte.gz").read_bytes() == (tmp_path / "mirror" / "t10k-images-idx3-ubyte.gz").read_bytes()
    assert (data_dir / "train-images-idx3-ubyte.gz").stat().st_mtime_ns == kept and not list(data_dir.glob("*.part"))
    data.setup()
    assert len(data.splits["test"]) == 10


@pytest.mark.parametrize("folder,problem", [("nothing-here/", "HTTP Error 404"), ("cut/", "retrieval incomplete: got only 100 out of 1000 bytes")])
def test_a_failed_download_says_why_and_leaves_no_partial_file(tmp_path, idx_server, folder, problem):
    data = IDXDataModule(str(tmp_path / "mnist"), name="mnist", download=True, mirror=idx_server + folder)
    with pytest.raises(HooktrainError, match=rf"`data.download`: cannot fetch http://127.0.0.1:\d+/{folder}train-images-idx3-ubyte.gz "
                                             rf"\({problem}.*without a network, copy the IDX files into"):
        data.prepare_data()
    assert not list((tmp_path / "mnist").iterdir())  # a later run does not read half a file


@pytest.mark.slow
def test_lenet_trains_on_fashion_mnist_idx_files(make_cfg, tmp_path):
    folder = write_idx_dataset(tmp_path / "fashion", train=200, test=50)
    metrics = train(make_cfg("data=fashion_mnist", f"data.data_dir={folder}", "model=lenet", "trainer.max_epochs=5",
                             "trainer.limit_train_batches=null", "trainer.limit_val_batches=null", "trainer.limit_test_batches=null",
                             "data.batch_size=16"))
    assert metrics["test/acc"] > 0.5  # brightness tells the classes apart: learnt, not guessed (0.1)


def test_image_folders_become_classes_in_sorted_order(tmp_path):
    data = ImageFolderDataModule(str(write_image_folder(tmp_path / "shapes")), image_size=16, channels=3, val_fraction=0.25, test_fraction=0.25)
    assert data.classes == ["circle", "square", "triangle"] and data.num_classes == 3
    images, labels = data.load()
    assert images.shape == (24, 3, 16, 16) and labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert images[labels == 2].mean() > images[labels == 0].mean()  # the brightness each class was written with
    (tmp_path / "shapes" / ".ipynb_checkpoints").mkdir()  # a hidden folder is no class
    assert ImageFolderDataModule(str(tmp_path / "shapes")).classes == ["circle", "square", "triangle"]
    (tmp_path / "shapes" / "square" / "broken.png").write_text("not an image")
    with pytest.raises(HooktrainError, match=r"cannot read .*broken.png as an image"):
        data.load()


def test_a_model_trains_on_a_folder_of_images(make_cfg, tmp_path):
    root = write_image_folder(tmp_path / "shapes")
    metrics = train(make_cfg("data=folder", f"data.root={root}", "model.num_classes=3"))
    assert set(metrics) >= {"test/acc", "test/loss"}


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_tensor_files_of_either_kind_train(make_cfg, tmp_path, suffix):
    path = write_tensor_file(tmp_path / f"data{suffix}", count=64, classes=4)
    data = TensorFileDataModule(str(path))
    images, labels = data.load()
    assert data.num_classes == 4 and images.shape == (64, 1, 8, 8) and labels.dtype == torch.long
    metrics = train(make_cfg("data=tensors", f"data.path={path}", "model=mlp", "model.num_classes=4"))
    assert set(metrics) >= {"test/acc", "test/loss"}


def test_tensor_files_with_other_keys_or_shapes_are_refused_by_name(tmp_path):
    path = write_tensor_file(tmp_path / "data.pt")
    with pytest.raises(HooktrainError, match=r"`data.images_key`: .* has no 'x'; its keys are images, labels"):
        TensorFileDataModule(str(path), images_key="x")
    with pytest.raises(HooktrainError, match=r"`data.num_classes`: .* has label 3, so it needs at least 4 classes"):
        TensorFileDataModule(str(path), num_classes=2).load()
    torch.save({"images": torch.zeros(4, 8, 8), "labels": torch.zeros(4)}, tmp_path / "float_labels.pt")
    with pytest.raises(HooktrainError, match="N integer labels"):
        TensorFileDataModule(str(tmp_path / "float_labels.pt"))
    torch.save({"images": torch.zeros(4, 8, 8), "labels": torch.tensor([0, 1, -1, 0])}, tmp_path / "negative.pt")
    with pytest.raises(HooktrainError, match=r"negative.pt has negative labels; labels are 0 to num_classes - 1"):
        TensorFileDataModule(str(tmp_path / "negative.pt"))
