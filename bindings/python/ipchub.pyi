"""Client library of the ipchub local publish/subscribe hub."""

from os import PathLike
from types import TracebackType
from typing import Iterator, List, Optional, Type, Union

__version__: str
TRANSPORTS: List[str]

class Error(Exception):
    """Any ipchub failure."""

    code: Optional[int]
    """The hub's error code (docs/PROTOCOL.md) when the hub refused, else None."""

class NotRunningError(Error):
    """No hub listens at the socket."""

class RefusedError(Error):
    """The hub refused the request; `code` says why."""

class ClosedError(Error):
    """The connection is closed."""

class Message:
    """A received message."""

    @property
    def channel(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def seq(self) -> int: ...
    @property
    def origin(self) -> int: ...
    @property
    def priority(self) -> int: ...

class Client:
    """A connection to the hub (from `connect`)."""

    def subscribe(self, pattern: str) -> None:
        """Subscribe to a channel or pattern (`+` one level, `#` the rest)."""
    def unsubscribe(self, pattern: str) -> None: ...
    def publish(
        self,
        channel: str,
        data: Union[bytes, bytearray, str],
        priority: int = 0,
        confirm: bool = False,
    ) -> Optional[int]:
        """Publish; with confirm=True return the number of subscribers reached."""
    def receive(self, timeout: Optional[float] = None) -> Optional[Message]:
        """The next message within `timeout` seconds (None: no limit), or None."""
    def __iter__(self) -> Iterator[Message]: ...
    def __next__(self) -> Message: ...
    def flush(self) -> None: ...
    def fileno(self) -> int:
        """Descriptor for selectors / loop.add_reader: when readable, call
        receive(0) until it returns None. On mqueue and shm the hub going
        away does not make it readable: call receive(0) now and then too."""
    @property
    def id(self) -> int: ...
    @property
    def max_message(self) -> int: ...
    @property
    def missed(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Client": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

def connect(
    transport: str = "shm",
    socket: Optional[Union[str, "PathLike[str]"]] = None,
    name: Optional[str] = None,
) -> Client:
    """Connect to the hub over `transport` ("socket", "pipe", "fifo", "mqueue", "shm")."""
