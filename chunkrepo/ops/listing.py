"""tar tvf / tar tf style listings of a backup (placeholder, being written)."""


def tvf_lines(entries):
    raise NotImplementedError


def tf_lines(entries):
    raise NotImplementedError
