"""Bounded HTTP for the API clients: a total deadline per request and a cap on the decoded response size.

httpx's timeouts bound each read, so a server that drips a byte at a time holds a request forever; and it
decodes gzip as it reads, so a small compressed body can expand into gigabytes. The transport here
checks the clock between reads (a `ReadTimeout` past the deadline, which the client treats like any
timeout) and decodes gzip / deflate itself with a bounded output, so no answer can exhaust memory.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator

import httpx2

# The largest answer vchain reads: far above an API's JSON or a base64 image (a 1536x1024 PNG is ~4 MB),
# yet small enough that a hostile or broken server cannot exhaust the process's memory.
MAX_RESPONSE_BYTES = 128 * 2**20
_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


class ResponseLimitError(Exception):
    """A response that is larger than `MAX_RESPONSE_BYTES` once decoded, or in an encoding vchain does not read."""


class BoundedTransport(httpx2.BaseTransport):
    """An `httpx2.HTTPTransport` whose every request has a total deadline and a bounded response size."""

    def __init__(self, seconds: float, limit: int | None = None):
        self.inner = httpx2.HTTPTransport()
        self.seconds, self.limit = seconds, MAX_RESPONSE_BYTES if limit is None else limit

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        deadline = time.monotonic() + self.seconds
        request.headers["Accept-Encoding"] = "gzip, deflate"
        response = self.inner.handle_request(request)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in (*_WBITS, "identity", ""):
            response.close()
            raise ResponseLimitError(
                f"the server answered in the content-encoding {encoding!r}, which vchain does not read"
            )
        if time.monotonic() > deadline:
            response.close()
            raise httpx2.ReadTimeout(f"no answer within the total timeout of {self.seconds} s", request=request)
        # The body is decoded here, bounded; the client then sees it as plain bytes.
        for name in ("content-encoding", "content-length"):
            response.headers.pop(name, None)
        response.stream = _BoundedStream(response.stream, request, deadline, self.seconds, self.limit, encoding)
        return response

    def close(self) -> None:
        self.inner.close()


class _BoundedStream(httpx2.SyncByteStream):
    def __init__(self, inner, request, deadline: float, seconds: float, limit: int, encoding: str):
        self.inner, self.request = inner, request
        self.deadline, self.seconds, self.limit = deadline, seconds, limit
        self.decoder = zlib.decompressobj(_WBITS[encoding]) if encoding in _WBITS else None

    def __iter__(self) -> Iterator[bytes]:
        total = 0
        for chunk in self.inner:
            if time.monotonic() > self.deadline:
                raise httpx2.ReadTimeout(
                    f"the answer did not finish within the total timeout of {self.seconds} s", request=self.request
                )
            pending = chunk
            while pending:
                # Decoded at most one byte past the limit at a time: a bomb never expands in memory.
                data, pending = self._decode(pending, self.limit - total + 1)
                total += len(data)
                if total > self.limit:
                    raise ResponseLimitError(
                        f"the answer is over vchain's limit of {self.limit} bytes once decoded "
                        "(vchain.backends._http.MAX_RESPONSE_BYTES); nothing of it was used"
                    )
                yield data

    def _decode(self, data: bytes, room: int) -> tuple[bytes, bytes]:
        """(up to `room` decoded bytes of `data`, what is left of `data` to decode)."""
        if self.decoder is None:
            return data, b""
        try:
            return self.decoder.decompress(data, room), self.decoder.unconsumed_tail
        except zlib.error as e:
            raise ResponseLimitError(f"the answer's compressed body does not decode: {e}") from e

    def close(self) -> None:
        self.inner.close()
