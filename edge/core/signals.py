"""Stop and reload requests from signals, for `hlgfa run`.

Installed first thing in `hlgfa run` (edge.cli, before the subcommand modules and numpy, cv2, zmq
are imported and before the model and backend load, which take seconds): until then SIGHUP's
default action ends the process (exit 129, what `systemctl reload` during a start did) and Ctrl-C
is a KeyboardInterrupt traceback from inside an import. The handlers only set flags; the daemon acts
on them: a stop asked before the daemon starts ends it with 0 before anything is opened, a reload
asked before then is void (the thresholds file is read at start anyway).
"""

import signal
import threading


class SignalRequests:
    def __init__(self):
        self.stop = threading.Event()
        self.reload = threading.Event()

    def request_stop(self, *_) -> None:
        self.stop.set()

    def request_reload(self, *_) -> None:
        self.reload.set()

    def install(self) -> "SignalRequests":
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)
        return self
