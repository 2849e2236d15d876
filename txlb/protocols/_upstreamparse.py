"""
Reading HTTP/1.1 responses from a backend: where each message starts and
ends, byte-exact, over httptools (llhttp) in its strict mode.

L{ResponseReader} is the parsing half of
L{txlb.protocols.upstream.UpstreamConnection}, kept apart so that the
connection reads as a state machine over events, and this as the framing
rules.  It does no I/O: it is fed bytes and reports to a L{ResponseSink}.

Why txlb finds the end of each head itself
==========================================

llhttp cannot be told that a response answers a HEAD request (httptools
does not pass that on), so on its own it would wait for the body a HEAD
response announces but never sends.  It also consumes the bytes after a
message silently when they are CR or LF, so it cannot say whether a
backend sent more than its response.  txlb needs both answers exactly: a
connection is reused only when its response ended on the last byte read.

So the reader finds the end of each head (the first CRLFCRLF: in strict
mode llhttp allows no bare CR or LF in a head, so that is where llhttp
ends it too, which the reader checks) and feeds llhttp exactly the head.
Then:

  - a body delimited by C{Content-Length} is counted here, without llhttp
    (and without copying the bytes);
  - a chunked body goes through llhttp, which de-chunks it and checks every
    chunk size, extension and trailer.  A chunked message always ends with
    CRLFCRLF after a byte that is neither CR nor LF, and llhttp reports a
    message start for any other byte after it; so looking at the last five
    bytes read tells whether anything followed the message;
  - a close-delimited body is passed on as read;
  - no body (HEAD, 1xx, 204, 304, C{Content-Length: 0}) ends with the head.

llhttp checks what it parses; L{validateResponseHeaders} then applies
txlb's own framing rules to every head, interim ones included.

A backend sends the same few heads over and over (the same status, headers
and length; a C{Date} that changes once a second).  A final head that
arrived whole in one read and passed both checks is remembered, by its
exact bytes, the second time it is parsed (the first time, only its hash
is noted: remembering a head costs more than parsing it once, and heads
that vary, with a cookie or an ETag of their own, seldom come again): when
the same bytes come again as a whole head, parsing them can only give the
same answer, and the reader reports that answer without parsing.  Only heads whose body llhttp has no part in are remembered (a
length, or none), so llhttp's state never depends on what was skipped.

Most reads are more than a head: the whole response, head and body, and
nothing after it.  One that came after a remembered head, in a read of at
most 4 KiB, is remembered too, by all its bytes: the same read again is the
same whole response, found with one lookup, without looking for the end
of its head or cutting it from its body.
"""

from __future__ import annotations

import enum
from typing import Protocol as TypingProtocol
from typing import Sequence

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from txlb.protocols._seen import SeenOnce
from txlb.protocols.headers import (
    Body,
    HeaderError,
    ResponseFraming,
    validateResponseHeaders,
)

#: The most bytes one response head (status line and headers) may take.
MAX_RESPONSE_HEAD = 64 * 1024

#: The most interim (1xx other than 101) responses before a final one.
MAX_INTERIM_RESPONSES = 16

_HEAD_END = b"\r\n\r\n"
_LINE_ENDS = (b"\r", b"\n")
_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}
_STATUS_LINE_VERSIONS = {b"HTTP/1.1 ": (1, 1), b"HTTP/1.0 ": (1, 0)}

Headers = Sequence[tuple[bytes, bytes]]

# Final heads already parsed and validated, by their exact bytes: one table
# for responses to HEAD, one for the rest (L{validateResponseHeaders} reads
# the method for nothing else).  Each holds the version, status, reason,
# headers (a tuple, the same one each time), framing, and the size of the
# body (its length, or 0 for none).  Emptied when full.
_Known = tuple[tuple[int, int], int, bytes, tuple[tuple[bytes, bytes], ...],
               ResponseFraming, int]
_KNOWN_HEADS: dict[bytes, _Known] = {}
_KNOWN_HEAD_HEADS: dict[bytes, _Known] = {}
_MAX_KNOWN_HEADS = 512
# Longer heads are not remembered: the tables stay small (a few MiB at most)
# and heads that long seldom repeat.
_MAX_KNOWN_HEAD_SIZE = 4096
# Whole responses (a remembered head, its whole body and nothing after it, in
# one read of at most _MAX_KNOWN_HEAD_SIZE bytes), by the exact bytes of the
# read, for responses to HEAD and to the rest: the size of the head, then
# what _responseWhole reports.  Emptied when _MAX_KNOWN_HEADS are held.
_Whole = tuple[int, tuple[int, int], int, bytes, tuple[tuple[bytes, bytes], ...],
               ResponseFraming, bytes]
_KNOWN_RESPONSES: dict[bytes, _Whole] = {}
_KNOWN_HEAD_RESPONSES: dict[bytes, _Whole] = {}
# The heads parsed once that could be remembered: a head is remembered the
# second time it is parsed (see txlb.protocols._seen).
_MAX_SEEN_HEADS = 1024
_SEEN_HEADS = SeenOnce(_MAX_SEEN_HEADS)


class ResponseSink(TypingProtocol):
    """
    What a L{ResponseReader} reports to.  Each method may call
    L{ResponseReader.stop}, after which the reader reports nothing more.
    """

    def _responseHead(
        self,
        version: tuple[int, int],
        status: int,
        reason: bytes,
        headers: Headers,
        framing: ResponseFraming,
        more: bool,
        inBody: bool,
    ) -> None:
        """
        A final (or 101) response head arrived and passed validation;
        C{more}: another event of this response follows before L{feed}
        returns; C{inBody}: a body is to be read (L{ResponseReader.inBody}).
        C{headers} is a tuple, the same one each time, for a head the reader
        remembers (see the module docstring), else a list.
        """

    def _responseWhole(
        self,
        version: tuple[int, int],
        status: int,
        reason: bytes,
        headers: Headers,
        framing: ResponseFraming,
        body: bytes,
    ) -> None:
        """
        A final response other than 101 arrived whole in one read, head
        (validated) and body (its C{Content-Length} bytes, or none), with
        nothing after it: instead of L{_responseHead}, L{_responseBody} and
        L{_responseDone}.
        """

    def _responseInformational(
        self, status: int, reason: bytes, headers: Headers
    ) -> None:
        """
        An interim 1xx response (not 101) arrived and passed validation.
        """

    def _responseBody(self, data: bytes, more: bool) -> None:
        """
        Body bytes, de-chunked; C{more}: another event of this response
        follows before L{feed} returns.
        """

    def _responseDone(self, extra: bool) -> None:
        """
        The response ended; C{extra} when bytes followed it.
        """

    def _responseUpgraded(self, extra: bytes) -> None:
        """
        A 101 head ended at C{extra}, the first bytes of the new protocol.
        """

    def _responseBad(self, reason: str) -> None:
        """
        The response is malformed, for C{reason}.
        """


class _Phase(enum.Enum):
    """
    What the reader expects next.

    @cvar idle: nothing: no request is outstanding.
    @cvar head: a response head (interim or final).
    @cvar length: the rest of a C{Content-Length} body.
    @cvar chunked: the rest of a chunked body.
    @cvar close: the rest of a body that ends when the connection does.
    @cvar done: nothing more: the response ended, failed, or was given up.
    """

    # An identity hash, in C (see txlb.protocols.framing.Body).
    __hash__ = object.__hash__

    idle = "idle"
    head = "head"
    length = "length"
    chunked = "chunked"
    close = "close"
    done = "done"


# The phases and body kinds as module constants, read so on every response:
# CPython 3.11 does not specialize reading an attribute of a class, and
# reading a member from its enum class costs some 70 ns, a module constant 5.
_IDLE = _Phase.idle
_HEAD = _Phase.head
_LENGTH = _Phase.length
_CHUNKED = _Phase.chunked
_CLOSE = _Phase.close
_DONE = _Phase.done
_BODY_NONE = Body.NONE
_BODY_LENGTH = Body.LENGTH
_BODY_CHUNKED = Body.CHUNKED
_BODY_CLOSE = Body.CLOSE


class _Overrun(Exception):
    """
    Raised from an llhttp callback to stop it at bytes after a message.
    """


class ResponseReader:
    """
    Reads one response at a time from a backend's byte stream.

    Call L{expect} for each request sent, then L{feed} every byte read
    until the sink hears L{ResponseSink._responseDone},
    L{ResponseSink._responseUpgraded} or L{ResponseSink._responseBad}; tell
    it of the connection's end with L{connectionClosed}.

    @ivar framing: the final response's framing, once its head arrived.
    """

    def __init__(self, sink: ResponseSink, maxHeadSize: int = MAX_RESPONSE_HEAD):
        """
        @param sink: told of every event.
        @param maxHeadSize: the most bytes a response head may take.
        """
        self._sink = sink
        self._maxHeadSize = maxHeadSize
        self._phase = _IDLE
        self._stopped = False
        self._parser: HttpResponseParser | None = None
        self._method = b"GET"
        self._interim = 0
        self.framing: ResponseFraming | None = None
        self._resetHead()
        self._remaining = 0
        self._pieces: list[bytes] = []
        self._overrun = False
        self._tail = b""

    def _resetHead(self) -> None:
        """
        Get ready for the next head.
        """
        self._headSize = 0
        self._headTail = b""
        self._headDone = False
        self._messageDone = False
        self._reason = b""
        self._headers: Headers | None = []

    def expect(self, method: bytes) -> None:
        """
        A request with C{method} was sent: read its response.

        L{txlb.protocols.upstream.UpstreamConnection.sendRequest} does the
        same inline, once per request: keep the two alike.
        """
        self._method = method
        self._interim = 0
        self.framing = None
        # The rest of what L{_resetHead} resets waits for the first head
        # read through llhttp (see L{_readHeads}); most are not.
        self._headSize = 0
        self._stopped = False
        self._phase = _HEAD

    def stop(self) -> None:
        """
        Report nothing more for this response.
        """
        self._stopped = True
        self._phase = _DONE

    @property
    def inBody(self) -> bool:
        """
        C{True} while the final response's body is being read.
        """
        return self._phase in (_LENGTH, _CHUNKED, _CLOSE)

    def feed(self, data: bytes) -> None:
        """
        Read C{data}, the next bytes from the backend.
        """
        phase = self._phase
        if phase is _HEAD:
            if not self._headSize:
                # The head starts with this read: it may be a whole response
                # remembered, or one remembered head (_readHeads, for the
                # usual case, without its loop).
                toHead = self._method == b"HEAD"
                size = len(data)
                # Only reads this small are remembered whole: a larger one
                # is not looked up (which would hash all of it).
                whole = (
                    (_KNOWN_HEAD_RESPONSES if toHead else _KNOWN_RESPONSES).get(data)
                    if size <= _MAX_KNOWN_HEAD_SIZE else None
                )
                if whole is not None:
                    end, version, status, reason, headers, framing, body = whole
                    if end <= self._maxHeadSize:
                        # As below, for a head and body remembered together.
                        self._headSize = end
                        self._headers = None
                        self.framing = framing
                        self._phase = _DONE
                        self._sink._responseWhole(
                            version, status, reason, headers, framing, body
                        )
                        return
                end = data.find(_HEAD_END) + 4
                if 3 < end <= self._maxHeadSize:
                    head = data if end == size else data[:end]
                    known = (_KNOWN_HEAD_HEADS if toHead else _KNOWN_HEADS).get(head)
                    if known is not None:
                        self._headSize = end
                        version, status, reason, headers, framing, length = known
                        if size - end == length:
                            # The whole response and nothing more (see
                            # _final): most responses.
                            self._headers = None
                            self.framing = framing
                            self._phase = _DONE
                            body = data[end:]
                            if size <= _MAX_KNOWN_HEAD_SIZE:
                                wholes = (
                                    _KNOWN_HEAD_RESPONSES if toHead else _KNOWN_RESPONSES
                                )
                                if len(wholes) >= _MAX_KNOWN_HEADS:
                                    wholes.clear()
                                wholes[data] = (
                                    end, version, status, reason, headers, framing, body
                                )
                            self._sink._responseWhole(
                                version, status, reason, headers, framing, body
                            )
                            return
                        self._final(
                            version, status, reason, headers, framing, data[end:]
                        )
                        return
                    # A new head, whole in this read: _readHeads, without
                    # looking for its end or up its bytes again.
                    self._headTail = b""
                    self._headDone = False
                    self._messageDone = False
                    self._reason = b""
                    self._headers = []
                    self._headSize = end
                    rest = b"" if end == size else data[end:]
                    if not self._parse(head):
                        return
                    if not self._headDone:
                        self._bad("malformed response head")
                        return
                    if self._endHead(rest, head):
                        self._readHeads(rest)
                    return
            self._readHeads(data)
        elif phase is _LENGTH:
            self._readLength(data)
        elif phase is _CHUNKED:
            self._readChunked(data)
        elif phase is _CLOSE:
            self._sink._responseBody(data, False)

    def connectionClosed(self, clean: bool) -> bool:
        """
        The connection ended (C{clean}: with a FIN, not a reset).

        @return: C{True} when that completed the response: a close-delimited
            body ends at a clean close; everything else was cut short.
        """
        completed = self._phase is _CLOSE and clean
        self._phase = _DONE
        return completed

    # Heads

    def _findHeadEnd(self, data: bytes) -> int:
        """
        @return: the offset in C{data} just past the CRLFCRLF ending the
            head being read, or -1 when C{data} does not end it.
        """
        tail = self._headTail
        if tail:
            # The CRLFCRLF may start in the bytes of an earlier read.
            at = (tail + data[:3]).find(_HEAD_END)
            if at != -1:
                return at + 4 - len(tail)
        at = data.find(_HEAD_END)
        return at if at == -1 else at + 4

    def _parse(self, data: bytes) -> bool:
        """
        Feed head bytes to llhttp.

        @return: C{False} when they were malformed (and reported so).
        """
        parser = self._parser
        if parser is None:
            parser = self._parser = HttpResponseParser(self)
        try:
            parser.feed_data(data)
        except HttpParserUpgrade:
            pass
        except HttpParserError as e:
            # llhttp pauses after every 101 head, with or without
            # "Connection: upgrade"; the head itself was parsed.
            if not (self._headDone and parser.get_status_code() == 101):
                self._bad(f"malformed response: {e}")
                return False
        return True

    def _readHeads(self, data: bytes) -> None:
        """
        Read head bytes, and what follows each head that ends in C{data}.
        """
        if not self._headSize:
            # A new response: what expect left to reset (see _resetHead).
            self._headTail = b""
            self._headDone = False
            self._messageDone = False
            self._reason = b""
            self._headers = []
        while True:
            whole = False
            if self._headTail:
                end = self._findHeadEnd(data)
            else:
                # The usual case: the head starts in this read.
                end = data.find(_HEAD_END)
                if end != -1:
                    end += 4
                    whole = self._headSize == 0
            if end == -1:
                self._headSize += len(data)
                if self._headSize > self._maxHeadSize:
                    self._bad("response head too large")
                    return
                self._headTail = (self._headTail + data[-3:])[-3:]
                # llhttp sees the bytes now, so that garbage fails at once
                # rather than when the head limit or a timeout is reached.
                if self._parse(data) and self._headDone:
                    # Only a bare LF could end a head here; strict llhttp
                    # refuses those, but a disagreement must not pass.
                    self._bad("malformed response head")
                return
            self._headSize += end
            if self._headSize > self._maxHeadSize:
                self._bad("response head too large")
                return
            if end == len(data):
                head, rest = data, b""
            else:
                head, rest = data[:end], data[end:]
            if whole:
                known = (
                    _KNOWN_HEAD_HEADS if self._method == b"HEAD" else _KNOWN_HEADS
                ).get(head)
                if known is not None:
                    version, status, reason, headers, framing, _ = known
                    self._final(version, status, reason, headers, framing, rest)
                    return
            if not self._parse(head):
                return
            if not self._headDone:
                self._bad("malformed response head")
                return
            if not self._endHead(rest, head if whole else None):
                return
            data = rest

    def _endHead(self, rest: bytes, head: bytes | None) -> bool:
        """
        A head ended, followed by C{rest}: validate it and report it.

        @param head: the head's bytes when it arrived whole in one read (it
            may then be remembered), else C{None}.
        @return: C{True} when it was an interim response and C{rest} is
            another head to read.
        """
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        reason, headers = self._reason, self._headers
        # A head read whole starts with its status line, which llhttp
        # accepted: its first bytes say the version at a quarter of the cost
        # of asking llhttp (which formats a string).
        version = None if head is None else _STATUS_LINE_VERSIONS.get(head[:9])
        if version is None:
            rawVersion = parser.get_http_version()
            version = _VERSIONS.get(rawVersion)
            if version is None:
                major, _, minor = rawVersion.partition(".")
                version = (int(major), int(minor))
        try:
            framing = validateResponseHeaders(version, status, headers, self._method)
        except HeaderError as e:
            self._bad(f"malformed response head: {e.reason}")
            return False
        sink = self._sink
        if status < 200 and status != 101:
            self._interim += 1
            if self._interim > MAX_INTERIM_RESPONSES:
                self._bad("too many interim responses")
                return False
            self._resetHead()
            sink._responseInformational(status, reason, headers)
            return bool(rest) and not self._stopped
        body = framing.body
        if not self._messageDone and body is not _BODY_CHUNKED:
            # llhttp still expects a body it will not be fed (HEAD, or a
            # length or close-delimited body counted here): start afresh.
            self._parser = None
        if (
            head is not None
            and status != 101
            and (body is _BODY_LENGTH or body is _BODY_NONE)
            and len(head) <= _MAX_KNOWN_HEAD_SIZE
        ):
            if _SEEN_HEADS.again(head):
                known = _KNOWN_HEAD_HEADS if self._method == b"HEAD" else _KNOWN_HEADS
                if len(known) >= _MAX_KNOWN_HEADS:
                    known.clear()
                headers = tuple(headers)
                size = framing.contentLength if body is _BODY_LENGTH else 0
                known[head] = (version, status, reason, headers, framing, size)
        return self._final(version, status, reason, headers, framing, rest)

    def _final(
        self,
        version: tuple[int, int],
        status: int,
        reason: bytes,
        headers: Headers,
        framing: ResponseFraming,
        rest: bytes,
    ) -> bool:
        """
        Report a final (or 101) head, validated, followed by C{rest}, and
        read what of its body C{rest} holds.

        @return: C{False}.
        """
        sink = self._sink
        # Trailers, after a chunked body, are dropped.
        self._headers = None
        self.framing = framing
        body = framing.body
        if status != 101 and (
            (body is _BODY_LENGTH and len(rest) == framing.contentLength)
            or (body is _BODY_NONE and not rest)
        ):
            # The whole response, and nothing after it: most responses.
            self._phase = _DONE
            sink._responseWhole(version, status, reason, headers, framing, rest)
            return False
        # Whether the sink hears more of this response before feed returns:
        # the end of a response without a body, or body bytes read with its
        # head (a chunked body may need more bytes for its first piece).
        error = None
        if status == 101:
            self._parser = None
            phase = _DONE
            more = True
        elif body is _BODY_LENGTH and framing.contentLength:
            phase = _LENGTH
            self._remaining = framing.contentLength
            more = bool(rest)
        elif body is _BODY_CHUNKED:
            phase = self._phase = _CHUNKED
            self._tail = b""
            more = False
            if rest:
                # Parse what came with the head first, to know whether
                # anything of the body follows at once.
                error = self._feedChunked(rest)
                more = error is not None or bool(self._pieces) or self._messageDone
        elif body is _BODY_CLOSE:
            phase = _CLOSE
            more = bool(rest)
        else:
            phase = _DONE
            more = True
        self._phase = phase
        sink._responseHead(
            version, status, reason, headers, framing, more, phase is not _DONE
        )
        if self._stopped:
            return False
        if self._phase is _DONE:
            if status == 101:
                sink._responseUpgraded(rest)
            else:
                # No body: the response ends with its head.
                sink._responseDone(bool(rest))
        elif rest:
            if phase is _LENGTH:
                self._readLength(rest)
            elif phase is _CHUNKED:
                self._reportChunked(error)
            else:
                self.feed(rest)
        return False

    # Bodies

    def _readLength(self, data: bytes) -> None:
        """
        Read bytes of a C{Content-Length} body.
        """
        remaining = self._remaining
        size = len(data)
        if size < remaining:
            self._remaining = remaining - size
            self._sink._responseBody(data, False)
            return
        self._remaining = 0
        extra = size > remaining
        self._sink._responseBody(data[:remaining] if extra else data, True)
        if self._phase is _LENGTH:
            self._phase = _DONE
            self._sink._responseDone(extra)

    def _readChunked(self, data: bytes) -> None:
        """
        Read bytes of a chunked body through llhttp.
        """
        self._reportChunked(self._feedChunked(data))

    def _feedChunked(self, data: bytes) -> str | None:
        """
        Feed bytes of a chunked body to llhttp, collecting its pieces in
        C{self._pieces} for L{_reportChunked}.

        @return: why the body is malformed, or C{None}.
        """
        parser = self._parser
        assert parser is not None
        self._pieces = []
        self._overrun = False
        try:
            parser.feed_data(data)
        except HttpParserError as e:
            if not self._messageDone:
                return f"malformed chunked body: {e}"
            # A byte after the message: llhttp began another one (which
            # L{on_message_begin} stopped) or refused it.
            self._overrun = True
        self._tail = (self._tail + data[-5:])[-5:]
        return None

    def _reportChunked(self, error: str | None) -> None:
        """
        Report what L{_feedChunked} found.
        """
        if error is not None:
            self._bad(error)
            return
        pieces = self._pieces
        if pieces:
            self._sink._responseBody(
                pieces[0] if len(pieces) == 1 else b"".join(pieces),
                self._messageDone,
            )
            if self._phase is not _CHUNKED:
                return
        if self._messageDone:
            # The message ends with CRLFCRLF after a byte that is neither:
            # a CR or LF there means CR or LF bytes followed it.
            extra = self._overrun or self._tail[:1] in _LINE_ENDS
            self._phase = _DONE
            self._sink._responseDone(extra)

    def _bad(self, reason: str) -> None:
        """
        Report a malformed response; read nothing more.
        """
        self._phase = _DONE
        self._parser = None
        self._sink._responseBad(reason)

    # llhttp callbacks (httptools looks them up by name)

    def on_message_begin(self) -> None:
        """
        llhttp starts a message: after a chunked body, that is a byte too
        many.
        """
        if self._messageDone:
            raise _Overrun()

    def on_status(self, data: bytes) -> None:
        """
        Part of the reason phrase.
        """
        self._reason += data

    def on_header(self, name: bytes, value: bytes) -> None:
        """
        One header line (trailers, after a chunked body, are dropped).
        """
        headers = self._headers
        if headers is not None:
            headers.append((name, value))

    def on_headers_complete(self) -> None:
        """
        The head is parsed.
        """
        self._headDone = True

    def on_body(self, data: bytes) -> None:
        """
        De-chunked body bytes.
        """
        self._pieces.append(data)

    def on_message_complete(self) -> None:
        """
        llhttp ended the message (a head without body, or the last chunk).
        """
        self._messageDone = True
