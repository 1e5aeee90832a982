"""``modules.shared`` of the fake WebUI: options, command-line flags, job state.

``cmd_opts`` is parsed from the WebUI 1.10 flags extensions commonly read plus whatever the
extension's ``preload.py`` adds (``$FAKE_WEBUI_EXTENSION_DIR``), as the WebUI does.
"""

import argparse
import importlib.util
import os

from modules import paths_internal


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None,
                 onchange=None, section=None, refresh=None, comment_before="", comment_after="",
                 infotext=None, restrict_api=False, category_id=None):
        self.default, self.label, self.component = default, label, component
        self.component_args, self.onchange, self.section = component_args, onchange, section
        self.category_id = category_id

    def info(self, info):
        return self

    def needs_reload_ui(self):
        return self

    def needs_restart(self):
        return self


class Options:
    def __init__(self):
        self.data = {}
        self.data_labels = {}

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def onchange(self, key, func, call=True):
        if call:
            func()

    def set(self, key, value, is_api=False, run_callbacks=True):
        self.data[key] = value
        return True

    def __getattr__(self, item):
        if item in ("data", "data_labels"):
            raise AttributeError(item)
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)


class State:
    interrupted = skipped = False
    job = textinfo = ""
    job_no = job_count = sampling_step = sampling_steps = 0

    def begin(self, job="(unknown)"):
        self.job, self.interrupted, self.job_no = job, False, 0

    def end(self):
        self.job = ""

    def interrupt(self):
        self.interrupted = True


def _parser():
    parser = argparse.ArgumentParser()
    for flag in ("--data-dir", "--models-dir", "--ckpt-dir", "--lora-dir", "--api-auth",
                 "--server-name", "--embeddings-dir", "--vae-dir"):
        parser.add_argument(flag, default=None)
    for flag in ("--api", "--nowebui", "--listen", "--skip-install", "--share"):
        parser.add_argument(flag, action="store_true")
    preload = os.path.join(os.environ.get("FAKE_WEBUI_EXTENSION_DIR", ""), "preload.py")
    if os.path.isfile(preload):
        spec = importlib.util.spec_from_file_location("preload", preload)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.preload(parser)
    return parser


cmd_opts = _parser().parse_args([])
opts = Options()
state = State()
sd_model = None
data_path = paths_internal.data_path
models_path = paths_internal.models_path
