"""Streaming a backup (or a part of it) as a tar archive (placeholder, being written)."""


def write_tar(repo, root_tid, out, start="/", recursive=True, tar_format="pax"):
    raise NotImplementedError
