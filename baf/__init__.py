"""BaF Stream: split inference with Back-and-Forth prediction of deep feature tensors."""

__version__ = "0.1.0"
