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
