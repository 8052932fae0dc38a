"""A webhook receiver that verifies every delivery with the official Standard Webhooks
library (PyPI `standardwebhooks`): 204 when the signature verifies, 400 when it does not.

Usage: python3 standard_webhooks_receiver.py SECRET   (prints "ready PORT" once listening)
"""
import http.server
import sys

from standardwebhooks.webhooks import Webhook

verifier = Webhook(sys.argv[1])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            verifier.verify(body, headers)
            self.send_response(204)
        except Exception as error:  # the library raises WebhookVerificationError
            self.send_response(400)
            print(f"rejected: {error}", file=sys.stderr, flush=True)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(f"ready {server.server_address[1]}", flush=True)
server.serve_forever()
