# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""``struct lguest_regs`` for Python (``lguest._core.Regs``), and the u32 rule.

A :class:`Regs` is a typed window on 18 u32 words (a bytearray of lguest's,
or the numpy array given to the constructor), in the word order of lguest/include/lguest/abi.h; the compiled core points its
``lg_cpu.regs`` (and the native API its ``regs``) at the same words.  Every
setter applies ``to_u32`` (declared in _regs.pxd): the rule of
``lguest.validate.to_u32``, with a C fast path for exact ints.
"""

from libc.stdint cimport uint32_t

from lguest.abi cimport NUM_REGS

from . import validate as _validate
from .constants import REG_NAMES

cdef object _py_to_u32 = _validate.to_u32
cdef object _words_view = _validate.words_view


cdef uint32_t to_u32_slow(object v, str what) except? 0xFFFFFFFF:
    return <uint32_t>(<unsigned long long>_py_to_u32(v, what))


cdef class Regs:
    """``struct lguest_regs``: 18 u32 words, attribute access and a numpy view."""

    def __cinit__(self, array=None):
        cdef uint32_t[::1] view
        if array is None:
            # Not numpy: importing it costs a guest run ~40 ms; `array` makes
            # the numpy view on first use.
            words = _words_view(NUM_REGS)
        else:
            _validate.check_regs_array(array)
            words = memoryview(array)
            self._array = array
        view = words
        self._view = view
        self._words = words
        self.r = <lg_regs *>&view[0]

    @property
    def array(self):
        """The 18 words as a numpy uint32 array sharing their memory (numpy
        is imported on first use; the same array every time)."""
        if self._array is None:
            import numpy as np

            self._array = np.asarray(self._words)
        return self._array

    @property
    def words(self):
        """The 18 words as a memoryview of format "I" (no numpy)."""
        return self._words

    @property
    def eax(self):
        return self.r.eax

    @eax.setter
    def eax(self, value):
        self.r.eax = to_u32(value, "eax")

    @property
    def ebx(self):
        return self.r.ebx

    @ebx.setter
    def ebx(self, value):
        self.r.ebx = to_u32(value, "ebx")

    @property
    def ecx(self):
        return self.r.ecx

    @ecx.setter
    def ecx(self, value):
        self.r.ecx = to_u32(value, "ecx")

    @property
    def edx(self):
        return self.r.edx

    @edx.setter
    def edx(self, value):
        self.r.edx = to_u32(value, "edx")

    @property
    def esi(self):
        return self.r.esi

    @esi.setter
    def esi(self, value):
        self.r.esi = to_u32(value, "esi")

    @property
    def edi(self):
        return self.r.edi

    @edi.setter
    def edi(self, value):
        self.r.edi = to_u32(value, "edi")

    @property
    def ebp(self):
        return self.r.ebp

    @ebp.setter
    def ebp(self, value):
        self.r.ebp = to_u32(value, "ebp")

    @property
    def gs(self):
        return self.r.gs

    @gs.setter
    def gs(self, value):
        self.r.gs = to_u32(value, "gs")

    @property
    def fs(self):
        return self.r.fs

    @fs.setter
    def fs(self, value):
        self.r.fs = to_u32(value, "fs")

    @property
    def ds(self):
        return self.r.ds

    @ds.setter
    def ds(self, value):
        self.r.ds = to_u32(value, "ds")

    @property
    def es(self):
        return self.r.es

    @es.setter
    def es(self, value):
        self.r.es = to_u32(value, "es")

    @property
    def trapnum(self):
        return self.r.trapnum

    @trapnum.setter
    def trapnum(self, value):
        self.r.trapnum = to_u32(value, "trapnum")

    @property
    def errcode(self):
        return self.r.errcode

    @errcode.setter
    def errcode(self, value):
        self.r.errcode = to_u32(value, "errcode")

    @property
    def eip(self):
        return self.r.eip

    @eip.setter
    def eip(self, value):
        self.r.eip = to_u32(value, "eip")

    @property
    def cs(self):
        return self.r.cs

    @cs.setter
    def cs(self, value):
        self.r.cs = to_u32(value, "cs")

    @property
    def eflags(self):
        return self.r.eflags

    @eflags.setter
    def eflags(self, value):
        self.r.eflags = to_u32(value, "eflags")

    @property
    def esp(self):
        return self.r.esp

    @esp.setter
    def esp(self, value):
        self.r.esp = to_u32(value, "esp")

    @property
    def ss(self):
        return self.r.ss

    @ss.setter
    def ss(self, value):
        self.r.ss = to_u32(value, "ss")

    def __reduce_ex__(self, protocol):
        raise _validate.no_pickle(self)

    def __repr__(self):
        return "Regs(" + ", ".join(f"{n}={int(v):#x}" for n, v in zip(REG_NAMES, self._words)) + ")"
