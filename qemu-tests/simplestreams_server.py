"""A simplestreams mirror over HTTPS for test_simplestreams.sh.

Serves the directory it is started in, with a few paths that misbehave on
purpose, each the way a broken or hostile image server would:
  /trunc/...    announces the whole file, sends half of it, then closes;
  /stall/...    announces the whole file, sends half, then sends nothing;
  /redirect/... answers 302 to the same file elsewhere;
  /chunked/...  sends the file with Transfer-Encoding: chunked.
Usage: simplestreams_server.py CERT KEY PORTFILE LOG
Writes the port it listens on (loopback, chosen by the kernel) to PORTFILE
and one line per request to LOG. It stops by itself after ten minutes.
"""

import http.server
import os
import ssl
import sys
import threading
import time

cert, key, portfile, log = sys.argv[1:5]


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        with open(log, "a") as f:
            f.write(self.path + "\n")

    def do_GET(self):
        self.log_message("")
        for prefix in ("/trunc/", "/stall/", "/redirect/", "/chunked/"):
            if self.path.startswith(prefix):
                return self.odd(prefix, "." + self.path[len(prefix) - 1:])
        return super().do_GET()

    def odd(self, prefix, path):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            self.send_error(404)
            return
        if prefix == "/redirect/":
            self.send_response(302)
            self.send_header("Location", path[1:])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        if prefix == "/chunked/":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        if prefix == "/stall/":
            time.sleep(120)
        self.close_connection = True


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
with open(portfile + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(portfile + ".tmp", portfile)
threading.Timer(600, lambda: os._exit(0)).start()
server.serve_forever()
