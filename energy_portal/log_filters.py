"""Filters for the portal's log handlers (settings/base.py, LOGGING)."""

import logging


class RefusalWithoutTraceback(logging.Filter):
    """An expected refusal is one line, without a traceback.

    Django logs some 4xx answers with the exception that caused them (a page's PermissionDenied,
    a bad Host header, a malformed multipart body): their tracebacks show no defect and bury the
    lines that do. The line keeps its reason; server errors (5xx) keep their tracebacks.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if record.exc_info and isinstance(status, int) and status < 500:
            record.exc_info = None
            record.exc_text = None
        return True


class ClientFaultWithoutTraceback(logging.Filter):
    """A client's malformed WebSocket text is one warning line, not an error with a traceback.

    Uvicorn logs a text frame that is not UTF-8 with `logger.exception` and closes the socket
    with 1007: the fault is the client's, and the close code already tells it so.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UnicodeDecodeError):
            record.msg = (
                f"{record.getMessage()} ({exc.reason} at byte {exc.start}); closed with 1007"
            )
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class SocketChatterDropped(logging.Filter):
    """Uvicorn's bare "connection open" and "connection closed" lines are dropped.

    It logs both for every WebSocket, with neither peer nor path: 10,000 lines when 5,000 Pis
    reconnect, saying nothing its line for the accepted handshake (peer, path) does not.
    """

    CHATTER = frozenset({"connection open", "connection closed"})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.CHATTER
