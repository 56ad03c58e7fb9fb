# The root of `twistd web --path` in tests/test_run_servers.py: answers "pid <PID>".
import os

from twisted.web import resource


class Pid(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"pid %d\n" % os.getpid()


resource = Pid()
