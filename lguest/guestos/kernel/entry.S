/* Entry points of the lguest exec kernel: boot, the system-call gate (a DPL-3
 * trap gate, so `int $0x80` from ring 3 is a direct trap the host delivers
 * without leaving its native hook), the clock interrupt and the faults. */
#define __ASSEMBLER__ 1
#include "kernel.h"

#define PTE_P 1
#define PTE_W 2
#define PTE_U 4
#define USER_TOP 0xC0000000              /* = PAGE_OFFSET, without C's u suffix */

/* For the read/write fast path (below): %al = 0, then or-ed with 1 for
 * every check that fails.  [%ecx, %ecx + %edx) must be one page below
 * USER_TOP with 1 <= %edx <= FAST_MAX, and its PTE must have the bits
 * `need`.  Clobbers %ah, %esi, %edi, %ebp. */
.macro USER_RANGE_OK need
        xorl    %eax, %eax
        cmpl    $USER_TOP, %ecx
        setae   %ah
        orb     %ah, %al
        leal    -1(%edx), %ebp                  /* count - 1: count 0 wraps, and fails */
        cmpl    $FAST_MAX - 1, %ebp
        seta    %ah
        orb     %ah, %al
        movl    %ecx, %esi
        andl    $0xfff, %esi
        addl    %edx, %esi                      /* offset in page + count (no wrap: count <= FAST_MAX) */
        cmpl    $4096, %esi
        seta    %ah
        orb     %ah, %al
        /* the PTE, through the page table if the PDE is present, else fast_zero */
        movl    %ecx, %ebp
        shrl    $22, %ebp
        movl    pgdir_page(,%ebp,4), %ebp       /* the PDE (a kernel one past USER_TOP: failed above) */
        movl    %ecx, %edi
        shrl    $10, %edi
        andl    $0xffc, %edi
        movl    %ebp, %esi
        andl    $0xfffff000, %esi
        leal    USER_TOP(%esi,%edi), %edi       /* __va(the page table) + index */
        movl    $fast_zero, %esi
        testl   $PTE_P, %ebp
        cmovz   %esi, %edi
        movl    (%edi), %ebp
        notl    %ebp
        testl   $\need, %ebp                    /* a bit needed that the PTE lacks */
        setnz   %ah
        orb     %ah, %al
.endm

/* %esi = fds[%ebx] (fast_no_file when closed or out of range), %edi its
 * inode; fails unless a regular file, no device, pos below 2^32.  Keeps
 * %al's failures; clobbers %ah, %ebp. */
.macro FILE_OK
        cmpl    $KMAX_FDS, %ebx
        setae   %ah
        orb     %ah, %al
        movzbl  %bl, %esi                       /* fd & 255: in range whatever fd is (failed above if not) */
        movl    fds(,%esi,4), %esi
        movl    $fast_no_file, %edi
        testl   %esi, %esi
        sete    %ah
        cmovz   %edi, %esi
        orb     %ah, %al
        movl    KF_INO(%esi), %edi
        cmpl    $0, KI_DEV(%edi)
        setne   %ah
        orb     %ah, %al
        movl    KI_MODE(%edi), %ebp
        andl    $0xf000, %ebp
        cmpl    $0x8000, %ebp                   /* S_IFREG */
        setne   %ah
        orb     %ah, %al
        cmpl    $0, KF_POS_HI(%esi)
        setne   %ah
        orb     %ah, %al
.endm

/* A fast-path call that failed a check goes to C: sys_read/sys_write
 * (regparm(3): eax fd, edx count, ecx buf), ecx and edx saved around the
 * call as the C path promises the program; then the three registers the
 * fast path saved, and back to the program. */
.macro TO_C fn
        pushl   %ecx
        pushl   %edx
        movl    %ebx, %eax
        cld
        call    \fn
        popl    %edx
        popl    %ecx
        popl    %ebp
        popl    %edi
        popl    %esi
        iret
.endm

        .section .text.entry, "ax"
        .globl _start
_start:
        movl    $boot_stack_top, %esp
        cld
        call    kmain
1:      jmp     1b

/* The syscall gate is a trap gate: irq_enabled is untouched on entry, so
 * a plain iret returns.
 *
 * read (3) and write (4) first: a program reading or writing a byte at a
 * time makes nothing else.  Under the emulator every guest block costs the
 * block hook and a trip through the engine's dispatch, every conditional
 * branch ends a block, and every ret (an indirect jump) misses the
 * engine's block chaining; every store is a call into the emulator (see
 * memcpy in kernel.c).  So the common case -- at most FAST_MAX bytes of a
 * regular file, the user buffer in one page -- is served here, in four
 * blocks (a write five; one more per byte past the first) where the C path
 * took twenty-four, saving three registers (ecx and edx are left as they
 * are, saved only on the way to C): all of sys_read's (sys_write's)
 * checks are made without branching, each setting a byte that is or-ed
 * into %al, and one branch sends any call that fails one of them to the C
 * path, which makes every check again and answers it (EBADF, EFAULT, end
 * of file, a device, a file that must grow or leave the boot image, ...).
 * Loads that would need a check first load from stand-ins instead
 * (fast_no_file, fast_zero: kernel.c) and the result is thrown away.
 *
 * The checks, as the C path's (do_read/do_write, user_ok):
 *   fd < KMAX_FDS, fds[fd] open, its access mode allows the call (and, for
 *   write, no O_APPEND); 1 <= count <= FAST_MAX; [buf, buf+count) inside
 *   one page below USER_TOP whose PTE is present and user (and writable,
 *   for read); the inode a regular file (mode S_IFREG, no device); the
 *   position below 2^32 and, for read, below the size (end of file: the C
 *   path returns 0); for write, pos + count within the data's capacity
 *   (cap 0: the data still lies in the boot image, copied out by the C
 *   path).  Capacity is at most 2^30 (file_grow), so pos + count stays far
 *   below write's EFBIG limit of 2^31 - 1. */
        .globl syscall_entry
syscall_entry:
        cmpl    $3, %eax
        je      read_fast
        cmpl    $4, %eax
        jne     1f
        pushl   %esi                            /* ecx and edx stay as they are: saved for the C path only */
        pushl   %edi
        pushl   %ebp
        incl    syscall_counts + 4 * 4
        USER_RANGE_OK (PTE_P | PTE_U)
        FILE_OK
        /* open for writing (access mode 1, 2 or 3), not O_APPEND */
        movl    KF_FLAGS(%esi), %ebp
        testl   $3, %ebp
        setz    %ah
        orb     %ah, %al
        testl   $0x400, %ebp
        setnz   %ah
        orb     %ah, %al
        /* pos < cap and count <= cap - pos: no growing, no copy-out */
        movl    KF_POS_LO(%esi), %ebp
        cmpl    KI_CAP(%edi), %ebp
        setae   %ah
        orb     %ah, %al
        negl    %ebp
        addl    KI_CAP(%edi), %ebp              /* cap - pos (meaningless when pos >= cap: bad already) */
        cmpl    %ebp, %edx
        seta    %ah
        orb     %ah, %al
        testb   %al, %al
        jnz     3f
        /* copy count bytes from buf to data + pos */
        movl    KF_POS_LO(%esi), %eax
        addl    %edx, KF_POS_LO(%esi)           /* pos += count (pos_hi is 0) */
        movl    KI_DATA(%edi), %esi
        addl    %eax, %esi                      /* destination */
        addl    %edx, %eax                      /* the new pos: the size if past it */
        cmpl    KI_SIZE(%edi), %eax
        cmovb   KI_SIZE(%edi), %eax             /* (no branch: a block saved for a store) */
        movl    %eax, KI_SIZE(%edi)
        movl    %edx, %ebp                      /* bytes count-1 .. 0 of buf */
5:      decl    %ebp
        movb    (%ecx,%ebp), %al
        movb    %al, (%esi,%ebp)
        jnz     5b                              /* (decl's flags: movb sets none) */
        movl    %edx, %eax                      /* the result: count */
        popl    %ebp
        popl    %edi
        popl    %esi
        iret
3:      TO_C    sys_write

read_fast:
        pushl   %esi
        pushl   %edi
        pushl   %ebp
        incl    syscall_counts + 4 * 3
        USER_RANGE_OK (PTE_P | PTE_U | PTE_W)
        FILE_OK
        /* open for reading: access mode 0, 2 or 3 */
        movl    KF_FLAGS(%esi), %ebp
        andl    $3, %ebp
        cmpl    $1, %ebp
        sete    %ah
        orb     %ah, %al
        /* pos < size (else end of file) */
        movl    KF_POS_LO(%esi), %ebp
        cmpl    KI_SIZE(%edi), %ebp
        setae   %ah
        orb     %ah, %al
        testb   %al, %al
        jnz     3f
        /* n = min(count, size - pos) >= 1 bytes from data + pos to buf */
        movl    KI_SIZE(%edi), %eax
        subl    %ebp, %eax
        cmpl    %edx, %eax
        cmova   %edx, %eax
        addl    %eax, KF_POS_LO(%esi)           /* pos += n: at most size, pos_hi stays 0 */
        movl    KI_DATA(%edi), %esi
        addl    %ebp, %esi                      /* source */
        movl    %eax, %edi                      /* the result: n */
        movl    %eax, %ebp                      /* bytes n-1 .. 0 */
5:      decl    %ebp
        movb    (%esi,%ebp), %al
        movb    %al, (%ecx,%ebp)
        jnz     5b
        movl    %edi, %eax
        popl    %ebp
        popl    %edi
        popl    %esi
        iret
3:      TO_C    sys_read

1:
/* struct regs (kernel.c): ebx ecx edx esi edi ebp eax, then the CPU's
 * eip cs eflags esp ss. */
        pushl   %eax
        pushl   %ebp
        pushl   %edi
        pushl   %esi
        pushl   %edx
        pushl   %ecx
        pushl   %ebx
        cld
        pushl   %esp
        call    do_syscall
        addl    $4, %esp
        popl    %ebx
        popl    %ecx
        popl    %edx
        popl    %esi
        popl    %edi
        popl    %ebp
        popl    %eax
        iret

/* lguest_iret: return from an interrupt gate.  The host entered the handler
 * with irq_enabled = 0; the saved eflags restore it.  Between that store
 * and the iret an interrupt would land on this very frame, so the host
 * delivers nothing while eip is in [noirq_start, noirq_end). */
        .globl noirq_start, noirq_end
lguest_iret:
        pushl   %eax
        movl    12(%esp), %eax
noirq_start:
        movl    %eax, %ss:lguest_data
        popl    %eax
        iret
noirq_end:

        .globl timer_entry
timer_entry:
        pushal
        cld
        call    do_timer
        popal
        jmp     lguest_iret

/* Faults: a frame of pushal, vector, error code, then the CPU's. */
#define FAULT_NOERR(n) .globl fault_##n; fault_##n: pushl $0; pushl $n; jmp fault_common
#define FAULT_ERR(n)   .globl fault_##n; fault_##n: pushl $n; jmp fault_common
FAULT_NOERR(0)
FAULT_NOERR(1)
FAULT_NOERR(3)
FAULT_NOERR(4)
FAULT_NOERR(5)
FAULT_NOERR(6)
FAULT_NOERR(7)
FAULT_ERR(8)
FAULT_ERR(10)
FAULT_ERR(11)
FAULT_ERR(12)
FAULT_ERR(13)
FAULT_ERR(14)
FAULT_NOERR(16)
FAULT_ERR(17)
FAULT_NOERR(19)

fault_common:
        pushal
        cld
        pushl   %esp
        call    do_fault                /* returns only for a fault it fixed up */
        addl    $4, %esp
        popal
        addl    $8, %esp                /* vector, error code */
        jmp     lguest_iret

        .bss
        .balign 4096
boot_stack:
        .fill 65536, 1, 0
        .globl boot_stack_top
boot_stack_top:
        .section .note.GNU-stack,"",@progbits
