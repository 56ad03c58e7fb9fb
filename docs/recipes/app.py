"""The application the recipes serve: any WSGI app named ``app`` in ``app.py``."""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from gapless-app\n"]
