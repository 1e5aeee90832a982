"""Paths; ``default_output_dir`` exists from 1.8; ``--models-dir`` (1.10) moves models_path."""

import os

import fake_host_config as C

script_path = C.ROOT
data_path = C.ROOT
models_path = C.MODELS_DIR or os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
if C.WEBUI >= (1, 8):
    default_output_dir = os.path.join(data_path, "outputs")
