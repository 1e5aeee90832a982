"""The version this fake WebUI claims to be."""


def git_tag():
    return "v1.10.1"
