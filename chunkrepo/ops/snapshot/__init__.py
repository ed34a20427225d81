"""Snapshots by BLAKE3 content digest, the local read-only cache, and clones of a version.

    store        take a snapshot (a backup record of kind "snapshot"), find a digest again
    manifest     the canonical manifest whose BLAKE3 is a directory's digest
    cache        CACHE/objects/ab/<digest>: read-only content materialised from the repository
    place        symlink / hardlink / reflink / copy a cache object to a user path
    materialise  restore_at / restore_safe / clone
    cachelink    the backup's hook: a symlink into the cache is stored as the content it names

See docs/snapshots.md.
"""
