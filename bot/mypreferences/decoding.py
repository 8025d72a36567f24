"""Decoding an answer's Content-Encoding with a hard cap on what it may grow to.

The client asks for ``Accept-Encoding: identity``; a server that compresses
anyway is decoded here, never by the HTTP library: httpx inflates each
network chunk whole before anyone can count it, so 64 KiB of a gzip bomb
became 64 MiB in memory at once. Here no more than ``limit`` + 1 decoded
bytes are ever produced. Nothing here knows the transport, so it moves with
the client to any HTTP library that can hand over the raw bytes.
"""

from __future__ import annotations

import zlib

# gzip or zlib header, detected by zlib itself (32 + the largest window).
_GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS
_RAW_DEFLATE = -zlib.MAX_WBITS


class UnsupportedEncoding(ValueError):
    """The answer is encoded in a way the bot did not ask for and cannot read."""


class CappedDecoder:
    """Turns raw body chunks into decoded bytes, refusing to exceed ``limit``.

    Supports ``identity``, ``gzip`` (and ``x-gzip``) and ``deflate`` (zlib or
    raw, as browsers accept both). Anything else raises UnsupportedEncoding.
    """

    def __init__(self, content_encoding: str | None, limit: int) -> None:
        encoding = (content_encoding or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
            raise UnsupportedEncoding(f"unsupported Content-Encoding {encoding[:20]!r}")
        self.limit = limit
        self.size = 0
        self._chunks: list[bytes] = []
        self._deflate = encoding == "deflate"
        self._inflate = None if encoding == "identity" else zlib.decompressobj(wbits=_GZIP_OR_ZLIB)
        self._started = False

    def feed(self, chunk: bytes) -> bool:
        """Add one raw chunk; False once the decoded body is larger than ``limit``.

        Raises UnsupportedEncoding when the compressed data is corrupt.
        """
        if self._inflate is None:
            return self._keep(chunk)
        if self._deflate and not self._started and chunk:
            self._inflate = _deflate_decoder(chunk)
        self._started = self._started or bool(chunk)
        data = chunk
        while data:
            try:
                # At most one byte over the limit: enough to know it is too large.
                out = self._inflate.decompress(data, self.limit - self.size + 1)
            except zlib.error as exc:
                raise UnsupportedEncoding("the compressed answer is corrupt") from exc
            if not self._keep(out):
                return False
            if self._inflate.eof:
                return True  # anything after the end of the stream is ignored
            data = self._inflate.unconsumed_tail
        return True

    def finish(self) -> bytes | None:
        """The whole decoded body, or None when it is larger than ``limit``."""
        if self._inflate is not None and not self._inflate.eof and self._started:
            try:
                tail = self._inflate.flush()
            except zlib.error as exc:
                raise UnsupportedEncoding("the compressed answer is corrupt") from exc
            if not self._keep(tail):
                return None
        if self.size > self.limit:
            return None
        return b"".join(self._chunks)

    def _keep(self, data: bytes) -> bool:
        self.size += len(data)
        if self.size > self.limit:
            self._chunks.clear()
            return False
        if data:
            self._chunks.append(data)
        return True


def _deflate_decoder(first_chunk: bytes) -> zlib._Decompress:
    """``deflate`` is zlib-wrapped by the standard and raw in practice: try both."""
    probe = zlib.decompressobj(wbits=_GZIP_OR_ZLIB)
    try:
        probe.decompress(first_chunk[:2], 0)
    except zlib.error:
        return zlib.decompressobj(wbits=_RAW_DEFLATE)
    return zlib.decompressobj(wbits=_GZIP_OR_ZLIB)
