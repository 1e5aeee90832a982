"""No checkpoints in this fake WebUI."""

checkpoints_list = {}
checkpoint_aliases = {}


def select_checkpoint():
    return None


def get_closet_checkpoint_match(search_string):
    return None


def list_models():
    return None
