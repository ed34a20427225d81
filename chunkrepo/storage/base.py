"""The storage interface every backend implements."""

from typing import Iterator, Optional, Protocol


class ObjectWriter(Protocol):
    """A new object being written; invisible under its name until commit()."""

    def write(self, data) -> None:
        """Append data (any bytes-like object); the caller may reuse its buffer once this returns."""

    def tell(self) -> int: ...

    def commit(self) -> None:
        """Make the object durable and visible under its name, atomically."""

    def abort(self) -> None:
        """Drop what was written; the name stays as it was."""


class Storage(Protocol):
    def put(self, name: str, data: bytes) -> None:
        """Store data under name atomically and durably (replacing any old object)."""

    def create(self, name: str) -> ObjectWriter:
        """Start writing a large object in pieces."""

    def get(self, name: str, offset: int = 0, length: Optional[int] = None) -> bytes:
        """Read an object or a byte range of it; NotFound if absent."""

    def size(self, name: str) -> int: ...

    def exists(self, name: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[str]:
        """Names of the objects below the folder prefix (recursively)."""

    def delete(self, name: str) -> None: ...

    def close(self) -> None: ...
