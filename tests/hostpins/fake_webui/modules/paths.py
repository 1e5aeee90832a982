"""``modules.paths`` of the fake WebUI: the same folders as ``paths_internal``."""

from modules import paths_internal

script_path = paths_internal.script_path
data_path = paths_internal.data_path
models_path = paths_internal.models_path
extensions_dir = paths_internal.extensions_dir
extensions_builtin_dir = paths_internal.extensions_builtin_dir
