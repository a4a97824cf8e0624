"""Everything that runs TensorFlow: the network, its inputs, training, scoring, storage, export.

Importing this package first imports TensorFlow with its C++ start-up lines (CUDA probing,
oneDNN notices, a `failed call to cuInit` error on every CPU-only machine) sent to a log file
instead of the console; see `bert4rec.model.runtime`.
"""

from bert4rec.model.runtime import quiet_import

quiet_import()
