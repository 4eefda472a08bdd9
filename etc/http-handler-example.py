#!/usr/bin/env python3
"""A DingTalk HTTP-mode bot server, standard library only, as an http_handler for dingstream.

dingstream POSTs each message exactly as DingTalk's HTTP mode does, so this checks the
signature the same way a bot on a public URL would:
    sign == Base64(HMAC-SHA256(key=appSecret, msg=timestamp + "\\n" + appSecret))
and refuses requests whose timestamp is more than an hour away.

    DINGTALK_APP_SECRET_FILE=/etc/dingstream/helpdesk.secret python3 http-handler-example.py 8080
and in dingstream.toml, in the app's [[app]] section:
    http_handler = "http://127.0.0.1:8080/dingtalk"

The answer is the reply: a JSON object with "msgtype" (text, markdown, actionCard, link), plain
text, or an empty body for none. 503 makes dingstream try again later; 400 makes a dead letter.
Port 0 picks a free port; the port is printed on the first line of stdout.
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def read_secret():
    path = os.environ.get("DINGTALK_APP_SECRET_FILE")
    if path:
        with open(path, encoding="utf-8") as file:
            return file.read().strip()
    secret = os.environ.get("DINGTALK_APP_SECRET", "")
    if not secret:
        sys.exit("set DINGTALK_APP_SECRET_FILE (or DINGTALK_APP_SECRET) to the app's AppSecret")
    return secret


SECRET = read_secret()


def signature_is_valid(timestamp, sign):
    try:
        sent_ms = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(time.time() * 1000 - sent_ms) > 3600 * 1000:
        return False
    expected = hmac.new(SECRET.encode(), f"{timestamp}\n{SECRET}".encode(), hashlib.sha256).digest()
    return hmac.compare_digest(base64.b64encode(expected).decode(), sign or "")


class Bot(BaseHTTPRequestHandler):
    # Keep-alive: dingstream reuses its connections. The answer is buffered and sent in one write
    # once the request is handled (the server flushes after each), headers and body together: a
    # body written after the headers would wait for the client to read them first, and without
    # Nagle's algorithm nothing else holds the answer back.
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not signature_is_valid(self.headers.get("timestamp"), self.headers.get("sign")):
            return self.answer(401, {"error": "bad signature"})
        message = json.loads(body)
        if self.headers.get("X-Dingstream-Kind", "bot") != "bot":
            return self.answer(200, None)  # events and card callbacks: nothing to say
        text = message.get("text", {}).get("content", "").strip()
        self.answer(200, {"msgtype": "markdown", "markdown": {"title": "echo", "text": f"**{message.get('senderNick', '')}** said: {text}"}})

    def answer(self, status, reply):
        data = b"" if reply is None else json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        sys.stderr.write("%s\n" % (format % args))


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8080), Bot)
    print(server.server_address[1], flush=True)
    server.serve_forever()
