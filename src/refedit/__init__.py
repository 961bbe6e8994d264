"""refedit: train, evaluate and compare reference-guided image and video editing methods."""

import os

# How long idle OpenMP threads spin before sleeping. libgomp's default (300k) wastes a shared or oversubscribed CPU;
# OMP_WAIT_POLICY=PASSIVE (no spin) costs 1.6x on an idle one. A tiny-VAE train step on 2 cores, idle / one busy
# neighbour core: default 121 / 403 ms, PASSIVE 190 / 296 ms, spin 10000: 128 / 424 ms. Effective only when set
# before torch loads OpenMP (the Makefile exports it; `make test` uses PASSIVE: its workers share the cores).
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
