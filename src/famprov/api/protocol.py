"""The HTTP protocol famprov serves with: uvicorn's httptools protocol, except
that a request too malformed to reach the app is still answered in the API's
JSON shape."""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MALFORMED = json.dumps(
    {"success": False, "message": "Invalid request - Malformed HTTP request"}
).encode()


class JsonErrorsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(MALFORMED),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + MALFORMED)
        self.transport.close()
