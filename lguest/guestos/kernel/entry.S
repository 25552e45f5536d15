/* Entry points of the lguest exec kernel: boot, the system-call gate (a DPL-3
 * trap gate, so `int $0x80` from ring 3 is a direct trap the host delivers
 * without leaving its native hook), the clock interrupt and the faults. */
#define __ASSEMBLER__ 1
#include "kernel.h"

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
 * time makes nothing else, and under the emulator every store is a slow
 * call (see memcpy in kernel.c), so this path saves only what C may
 * clobber (ecx, edx; eax is the result) and passes the arguments in
 * registers: sys_read/sys_write(eax fd, edx count, ecx buf), regparm(3).
 * Three stores here where the full frame takes nine. */
        .globl syscall_entry
syscall_entry:
        cmpl    $3, %eax
        je      2f
        cmpl    $4, %eax
        jne     1f
        pushl   %ecx
        pushl   %edx
        movl    %ebx, %eax
        cld
        call    sys_write
        popl    %edx
        popl    %ecx
        iret
2:      pushl   %ecx
        pushl   %edx
        movl    %ebx, %eax
        cld
        call    sys_read
        popl    %edx
        popl    %ecx
        iret

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
