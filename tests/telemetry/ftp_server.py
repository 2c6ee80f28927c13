"""A real FTP server for tests: pyftpdlib on 127.0.0.1, an OS-chosen port, one user, a folder.

    with FtpServer(root) as server:
        ftplib.FTP().connect(server.host, server.port)

It runs its own I/O loop in a thread, so several servers (and the test itself) do not share
pyftpdlib's global loop.
"""

import logging
import threading
from pathlib import Path

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer

USER = "sa4cps"
PASSWORD = "load-profiles"


class FtpServer:
    """Serves `root` (read, list and write) to `user`/`password`.

    `mlsd=False` makes a server that does not know MLSD, as some old ones, so clients must fall
    back to NLST.
    """

    def __init__(
        self, root: Path, *, user: str = USER, password: str = PASSWORD, mlsd: bool = True
    ):
        authorizer = DummyAuthorizer()
        authorizer.add_user(user, password, str(root), perm="elradfmwMT")
        commands = dict(FTPHandler.proto_cmds)
        if not mlsd:
            del commands["MLSD"]
        # A subclass per server: pyftpdlib keeps its configuration in class attributes.
        handler = type(
            "TestFtpHandler",
            (FTPHandler,),
            {
                "authorizer": authorizer,
                "proto_cmds": commands,
                "auth_failed_timeout": 0.05,  # the default 3 s only slows the tests
                "banner": "test FTP server ready",
            },
        )
        self._ioloop = IOLoop()
        self._server = FTPServer(("127.0.0.1", 0), handler, ioloop=self._ioloop)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-ftp-server", daemon=True)
        self.host, self.port = self._server.address
        self.root = root
        self.user = user
        self.password = password
        logging.getLogger("pyftpdlib").setLevel(logging.WARNING)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self._server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)

    def start(self) -> "FtpServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._server.close_all()

    def __enter__(self) -> "FtpServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
