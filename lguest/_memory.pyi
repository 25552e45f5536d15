"""Type stub for lguest/_memory.pyx (the buffer protocol of GuestMemory)."""

class BufferExporter:
    _exports: int
    def _set_buffer(self, address: int | None, length: int) -> None: ...
