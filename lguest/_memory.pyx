# cython: language_level=3
"""The buffer protocol for lguest.memory.GuestMemory on Pythons without
``__buffer__`` (< 3.12): GuestMemory derives from :class:`BufferExporter`."""

from cpython.buffer cimport PyBUF_FORMAT


cdef class BufferExporter:
    """Lends GuestMemory the buffer protocol on Pythons without __buffer__.

    The exported buffer is the mapping itself; ``_exports`` counts live views
    so GuestMemory.close() can refuse to unmap memory that is still seen.
    """
    cdef char *_buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _shape[1]
    cdef Py_ssize_t _strides[1]
    cdef public int _exports

    def _set_buffer(self, object address, Py_ssize_t length):
        if address is None:
            self._buf = NULL
            self._len = 0
        else:
            self._buf = <char *><size_t>address
            self._len = length

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if self._buf == NULL:
            raise ValueError("guest memory is closed")
        self._shape[0] = self._len
        self._strides[0] = 1
        buffer.buf = self._buf
        buffer.obj = self
        buffer.len = self._len
        buffer.readonly = 0
        buffer.itemsize = 1
        if flags & PyBUF_FORMAT:
            buffer.format = b"B"
        else:
            buffer.format = NULL
        buffer.ndim = 1
        buffer.shape = self._shape
        buffer.strides = self._strides
        buffer.suboffsets = NULL
        buffer.internal = NULL
        self._exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        self._exports -= 1
