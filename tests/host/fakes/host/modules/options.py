"""``OptionInfo`` (``category_id`` from 1.7) and ``Options`` (``set(..., run_callbacks)``)."""

import fake_host_config as C

from modules import call_queue


class _OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None,
                 onchange=None, section=None, refresh=None, comment_before="", comment_after="",
                 infotext=None, restrict_api=False):
        self.default, self.label, self.component = default, label, component
        self.component_args, self.onchange, self.section = component_args, onchange, section
        self.category_id = None

    def needs_restart(self):
        return self


class _OptionInfo17(_OptionInfo):
    def __init__(self, default=None, label="", component=None, component_args=None,
                 onchange=None, section=None, refresh=None, comment_before="", comment_after="",
                 infotext=None, restrict_api=False, category_id=None):
        super().__init__(default, label, component, component_args, onchange, section, refresh,
                         comment_before, comment_after, infotext, restrict_api)
        self.category_id = category_id


OptionInfo = _OptionInfo17 if C.WEBUI >= (1, 7) else _OptionInfo


class Options:
    """Saved values in ``data``; every ``set`` is logged with whether the lock was held."""

    def __init__(self, labels):
        object.__setattr__(self, "data", {})
        object.__setattr__(self, "data_labels", dict(labels))
        object.__setattr__(self, "set_calls", [])

    def __getattr__(self, key):
        if key in self.data:
            return self.data[key]
        if key in self.data_labels:
            return self.data_labels[key].default
        raise AttributeError(key)

    def __setattr__(self, key, value):
        self.data[key] = value

    def set(self, key, value, is_api=False, run_callbacks=True):
        self.set_calls.append((key, value, run_callbacks, call_queue.queue_lock.locked()))
        if self.data.get(key) == value:
            return False
        option = self.data_labels[key]
        self.data[key] = value
        if run_callbacks and option.onchange is not None:
            option.onchange()
        return True

    def add_option(self, key, info):
        self.data_labels[key] = info

    def onchange(self, key, func, call=True):
        self.data_labels[key].onchange = func
