"""Live-path benchmark: device socket -> channel layer -> dashboard socket. See README.md."""
