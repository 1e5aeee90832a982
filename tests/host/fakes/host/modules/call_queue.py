"""``queue_lock`` and the queued-call wrapper the real option handlers use."""

import threading

queue_lock = threading.Lock()


def wrap_queued_call(func):
    """Like the host's: take ``queue_lock`` around ``func``. Where the host would hang forever
    (the caller already holds the lock), this raises so a test fails instead of hanging."""
    def call(*args, **kwargs):
        if not queue_lock.acquire(timeout=0.5):
            raise RuntimeError("deadlock: an option change handler waited for queue_lock, which "
                               "its caller holds")
        try:
            return func(*args, **kwargs)
        finally:
            queue_lock.release()

    return call
