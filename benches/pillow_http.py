#!/usr/bin/env python3
"""The peer of pipelines/http-thumbnail.toml: a minimal Python HTTP server that answers a
POSTed photo with its 400 px watermarked JPEG (Pillow, draft mode, quality 80), one
thread per connection (ThreadingHTTPServer; Pillow releases the GIL while it decodes,
resizes and encodes).

Usage: pillow_http.py PORT
"""
import io
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image, ImageDraw, ImageFont

LONG_EDGE = 400
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def thumbnail(data):
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (LONG_EDGE, LONG_EDGE))
    im = im.convert("RGB")
    im.thumbnail((LONG_EDGE, LONG_EDGE))
    w, h = im.size
    px = max(10, round(max(w, h) * 0.05))
    margin = max(4, round(max(w, h) * 0.02))
    try:
        font = ImageFont.truetype(FONT, px)
    except OSError:
        font = ImageFont.load_default()
    l, t, r, b = font.getbbox("MyStore")
    mask = Image.new("L", (r, b), 0)
    ImageDraw.Draw(mask).text((0, 0), "MyStore", font=font, fill=128)
    im.paste((255, 255, 255), (w - r - margin, h - b - margin), mask)
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=80)
    return out.getvalue()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            data, status, ctype = thumbnail(body), 200, "image/jpeg"
        except Exception as e:  # a bad photo is the client's fault
            data, status, ctype = str(e).encode(), 400, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
