"""Reproducible BERT4Rec pipeline: raw -> tfrecord -> train_val -> test -> inference."""

import os

# Process-wide TensorFlow settings, read when TensorFlow starts; set here, before any bert4rec module
# can import it:
# - its C++ start-up chatter (CUDA probing, oneDNN notices) is not for users; errors stay;
# - oneDNN's CPU kernels: TensorFlow turns them on by itself only on CPUs with AVX-512 or newer. On an
#   AVX2-only CPU its own kernels ran the 668,438-item scoring pass 2.2-2.5x slower and an ML-1M training
#   step 1.3-1.5x slower. TF_ENABLE_ONEDNN_OPTS=0 in the environment still turns them off.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
