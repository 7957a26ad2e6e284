"""Data modules: the embedded digits (default), synthetic data, MNIST/Fashion-MNIST IDX files, your folders and tensor files."""

from hooktrain.data.digits import DigitsDataModule
from hooktrain.data.folder import ImageFolderDataModule
from hooktrain.data.idx import IDXDataModule
from hooktrain.data.synthetic import SyntheticDataModule
from hooktrain.data.tensor_file import TensorFileDataModule
from hooktrain.data.tensors import TensorDataModule

__all__ = ["DigitsDataModule", "IDXDataModule", "ImageFolderDataModule", "SyntheticDataModule", "TensorDataModule", "TensorFileDataModule"]
