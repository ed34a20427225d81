"""Verifying a repository (placeholder, being written)."""


def check_repository(repo, read_data=False, progress=None):
    raise NotImplementedError
