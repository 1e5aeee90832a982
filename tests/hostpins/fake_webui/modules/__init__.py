"""A tiny stand-in for Stable Diffusion WebUI 1.10's ``modules`` package.

Only what EasyPhoto's ``scripts/*.py`` and ``preload.py`` touch at import and registration
time: ``script_callbacks``, ``shared`` (``opts``, ``cmd_opts``, ``OptionInfo``, ``state``),
``paths``/``paths_internal``, ``scripts.basedir``, ``call_queue.queue_lock``, the version
(``launch_utils.git_tag``), and empty stand-ins of the generation modules the adapter imports
(``processing`` refuses to generate; no checkpoints, VAEs; three samplers). Folders come from
``$FAKE_WEBUI_ROOT`` (default: the working directory). The adapter's behaviour against each
host version is tested with the fuller fake of tests/host; this one only checks that the
extension loads under the WebUI's package pins.
"""
