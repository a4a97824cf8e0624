"""Reproducible BERT4Rec pipeline: raw -> tfrecord -> train_val -> test -> inference."""

__version__ = "0.1.0"
