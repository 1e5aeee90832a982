"""``Script``, ``ScriptRunner`` (errors in scripts are logged and swallowed, as in the host),
``scripts_data`` and the img2img / txt2img runners (set up by the test fixture)."""

from collections import namedtuple

import fake_host_config as C

AlwaysVisible = object()
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []
errors = []
scripts_txt2img = None
scripts_img2img = None


class Script:
    args_from = None
    args_to = None
    filename = None
    setup_for_ui_only = False

    def title(self):
        return "unnamed"

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass


class ScriptRunner:
    def __init__(self):
        self.scripts, self.selectable_scripts, self.alwayson_scripts = [], [], []
        self.inputs = [None]
        if C.WEBUI >= (1, 9):
            self.callback_map = {}

    def _each(self, method, p, *, skip_ui_only=False):
        for script in self.alwayson_scripts:
            if skip_ui_only and script.setup_for_ui_only:
                continue
            try:
                getattr(script, method)(p, *p.script_args[script.args_from:script.args_to])
            except Exception as error:  # noqa: BLE001 (the host reports and goes on)
                errors.append((script.title(), method, repr(error)))

    def setup_scrips(self, p, *, is_ui=True):
        self._each("setup", p, skip_ui_only=not is_ui)

    def before_process(self, p):
        self._each("before_process", p)

    def process(self, p):
        self._each("process", p)


class SeedScript(Script):
    """The built-in Seed script: its UI-only ``setup`` copies the UI's seed into ``p``."""

    setup_for_ui_only = True

    def title(self):
        return "Seed"

    def setup(self, p, seed=None, *rest):
        p.seed = seed


class SamplerScript(Script):
    """1.9+'s built-in Sampler script: UI-only ``setup`` copies sampler, scheduler and steps."""

    setup_for_ui_only = True

    def title(self):
        return "Sampler"

    def setup(self, p, steps=None, sampler_name=None, scheduler=None):
        p.steps, p.sampler_name, p.scheduler = steps, sampler_name, scheduler


class OtherExtensionScript(Script):
    """Another extension's always-on script that breaks when its arguments are missing."""

    def title(self):
        return "Other extension"

    def process(self, p, flag=None):
        if flag is None:
            raise RuntimeError("other extension: no arguments")
        p.other_extension_ran = True
