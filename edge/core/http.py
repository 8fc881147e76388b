"""What the product's HTTP servers (the metrics endpoint, the operator's view) share."""

import threading


class ConnectionCap:
    """Mixed in before socketserver.ThreadingMixIn: at most `max_connections` connections are served at
    once; past it a connection is refused at once (`refuse`, then closed) instead of getting a thread, so a
    flood of connections cannot take the process's threads and descriptors."""

    max_connections = 8

    def process_request(self, request, client_address):
        if "_slots" not in self.__dict__:  # called from the one accepting thread only
            self._slots = threading.BoundedSemaphore(self.max_connections)
        if not self._slots.acquire(blocking=False):
            self.refuse(request)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def refuse(self, request) -> None:
        """Tell a refused client why before it is closed; by default it is only closed."""
