"""The exception a command raises inside the functional model when it faults."""

from ..isa.enums import ErrorCode


class DeviceFault(Exception):
    """A command faulted with ``code``; the device records it and halts its queue."""

    def __init__(self, code: ErrorCode, message: str):
        self.code = ErrorCode(code)
        super().__init__(f"{self.code.name}: {message}")
