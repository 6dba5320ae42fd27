"""Tandem runtime: hardware, model files and the inference engine.

Knows nothing of HTTP or SQLite: it takes paths and parameters and yields tokens and
measurements.
"""

import os

# The probe numbers NVIDIA GPUs as NVML does, by PCI bus; CUDA's own default order is fastest
# first. With several different cards, a plan's main_gpu and the GPU timings kept per index and
# name would then address another card than the one planned for: CUDA is told the PCI order
# before llama.cpp first loads (an order the person set is kept).
os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
