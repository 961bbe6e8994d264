"""refedit: train, evaluate and compare reference-guided image and video editing methods."""

import os

# OpenMP threads that spin while waiting make a shared or oversubscribed CPU up to 20x slower (measured: a tiny VAE
# step 6.8 s -> 0.3 s with one busy neighbour core). Set before torch is imported by any refedit entry point.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
