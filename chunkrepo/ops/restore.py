"""Restoring a backup (or a part of it) into a directory (placeholder, being written)."""


def restore_tree(repo, root_tid, target, start="/"):
    raise NotImplementedError
