"""The WebUI's GPU lock."""

import threading

queue_lock = threading.Lock()
