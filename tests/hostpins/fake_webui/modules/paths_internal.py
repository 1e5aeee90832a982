"""Folders of the fake WebUI (``$FAKE_WEBUI_ROOT``, else the working directory)."""

import os

script_path = os.path.abspath(os.environ.get("FAKE_WEBUI_ROOT") or os.getcwd())
data_path = script_path
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
default_output_dir = os.path.join(data_path, "outputs")
