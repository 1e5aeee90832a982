"""EasyPhoto's WebUI entry: registrations only (every piece of logic lives in the package).

The WebUI executes this file at start and on every "Reload UI", with the extension folder on
``sys.path`` only while it runs: the folder is added for good and the package imported here, at
module level, so the callbacks' later imports of ``easyphoto.*`` keep working. The service and
its jobs live in ``easyphoto.engine.webui_ext`` (created once), not in this module.
"""

import sys
from pathlib import Path

EXTENSION_ROOT = str(Path(__file__).resolve().parents[1])
if EXTENSION_ROOT not in sys.path:
    sys.path.insert(0, EXTENSION_ROOT)

from easyphoto.engine import webui_ext  # after the sys.path line above

webui_ext.register()
