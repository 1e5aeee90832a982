"""``git_tag()`` as the host computes it (``git describe --tags``)."""

import fake_host_config as C


def git_tag():
    return C.TAG
