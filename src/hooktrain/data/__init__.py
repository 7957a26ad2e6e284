"""Data modules: the embedded digits (default) and synthetic data, both in-memory tensors."""

from hooktrain.data.digits import DigitsDataModule
from hooktrain.data.synthetic import SyntheticDataModule
from hooktrain.data.tensors import TensorDataModule

__all__ = ["DigitsDataModule", "SyntheticDataModule", "TensorDataModule"]
