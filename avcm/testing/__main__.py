"""``python -m avcm.testing``: replay a recorded schedule, or check a driver's conformance."""

import os
import sys

from ._cli import main
from ._scheduler import threads_holding_exit

status = main()
if threads_holding_exit():
    # a run abandoned a worker thread that never returned (ThreadWaitError, reported above):
    # the interpreter would wait for it at exit, for ever
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
raise SystemExit(status)
