/*
 * A tiny lguest guest kernel for i386 (GNU as, AT&T syntax), run by
 * lguest.unicorn.UnicornLauncher.  It does what an lguest Linux guest does,
 * in miniature:
 *
 *   - boots at ring 1 (cs 0x61, ds/es/ss 0x69) and registers its
 *     struct lguest_data with LGUEST_INIT, made KVM's way with `vmcall`
 *     (the host patches each vmcall into `int $0x1f; nop` on first use);
 *   - loads its IDT with LOAD_IDT_ENTRY, its kernel stack with SET_STACK,
 *     arms the clock with SET_CLOCKEVENT, switches to its own page tables
 *     with NEW_PGTABLE (paged build);
 *   - returns from interrupt handlers through the noirq window
 *     (lguest_iret: irq_enabled comes back from the saved eflags);
 *   - prints through the early console (NOTIFY with the address of a
 *     NUL-terminated string), halts when idle (HALT) and powers off
 *     (SHUTDOWN);
 *   - runs a user program at ring 3 (cs 0x73, ss 0x7b) that makes system
 *     calls with `int $SYSCALL_VEC` through a DPL-3 trap gate (a direct
 *     trap: delivered without the host's run loop), and survives a #GP
 *     (`int $0x81` at a kernel-only gate, and `cli`), a #UD (`ud2`) and a
 *     #PF (reading a kernel-only page when paged, memory beyond RAM when
 *     flat).
 *
 * Build-time symbols (as --defsym NAME=VALUE; ld needs PAGE_OFFSET too):
 *   PAGE_OFFSET    0 (flat, default) or e.g. 0xC0000000 (paged)
 *   SYSCALL_VEC    0x80 (default) or 0x40
 *   SYSCALL_GATE   0xEF00 (present trap gate, DPL 3; default) or 0xEE00
 *                  (interrupt gate: lguest does not treat it as direct)
 *   NSYSCALLS      system calls in the counting loop (default 1000)
 *   TICK_NS        clock period (default 1000000 = 1 ms)
 *   TICKS          timer ticks to wait for before powering off (default 3)
 *   WAIT_IRQ1      N > 0: the user program waits until irq 1 has come N
 *                  times (the Launcher's send_irq) before it waits for the clock
 *   IRQ1_WHERE     1: each irq 1 also prints how many turns the user
 *                  program's wait loop had made when it came (record/replay)
 *   RDTSC          N > 0: the user program reads the TSC N times (rdtsc,
 *                  then rdtscp), printing each low word, spinning between
 *                  (record/replay: the host's TSC is an input)
 *   RDTSC_GAP      turns of the spin between two reads (default 20000)
 *   BAD            1: bad IDT type, 2: kernel stack outside RAM,
 *                  3: an unknown hypercall (the host must kill the guest)
 */

        .ifndef PAGE_OFFSET
        .set PAGE_OFFSET, 0
        .endif
        .ifndef SYSCALL_VEC
        .set SYSCALL_VEC, 0x80
        .endif
        .ifndef SYSCALL_GATE
        .set SYSCALL_GATE, 0xEF00
        .endif
        .ifndef NSYSCALLS
        .set NSYSCALLS, 1000
        .endif
        .ifndef TICK_NS
        .set TICK_NS, 1000000
        .endif
        .ifndef TICKS
        .set TICKS, 3
        .endif
        .ifndef BAD
        .set BAD, 0
        .endif
        .ifndef WAIT_IRQ1
        .set WAIT_IRQ1, 0
        .endif
        .ifndef IRQ1_WHERE
        .set IRQ1_WHERE, 0
        .endif
        .ifndef RDTSC
        .set RDTSC, 0
        .endif
        .ifndef RDTSC_GAP
        .set RDTSC_GAP, 20000
        .endif

        /* hypercall numbers (arch/x86/include/asm/lguest_hcall.h) */
        .set LHCALL_LGUEST_INIT, 1
        .set LHCALL_SHUTDOWN, 2
        .set LHCALL_NEW_PGTABLE, 4
        .set LHCALL_LOAD_IDT_ENTRY, 6
        .set LHCALL_SET_STACK, 7
        .set LHCALL_SET_CLOCKEVENT, 9
        .set LHCALL_HALT, 10
        .set LHCALL_NOTIFY, 17
        .set LGUEST_SHUTDOWN_POWEROFF, 1

        .set KERNEL_DS, 0x69            /* __KERNEL_DS | GUEST_PL */
        .set USER_CS, 0x73
        .set USER_DS, 0x7b
        .set INTERRUPT_GATE, 0x8E00     /* present, DPL 0, type 0xE */
        .set KERNEL_TRAP_GATE, 0x8F00   /* present, DPL 0, type 0xF */
        .set KERNEL_ONLY_VEC, 0x81

        /* system calls of the user program */
        .set SYS_WRITE, 1
        .set SYS_COUNT, 2
        .set SYS_EXIT, 3
        .set SYS_HEX, 4                 /* print ebx in hex and a newline */

        .text
        .globl _start
_start:
        movl    $kstack_top, %esp

        /* LGUEST_INIT: tell the host where lguest_data is (guest-physical). */
        movl    $LHCALL_LGUEST_INIT, %eax
        movl    $(lguest_data - PAGE_OFFSET), %ebx
        call    hcall

        .if BAD == 1
        movl    $LHCALL_LOAD_IDT_ENTRY, %eax    /* type 0x5 (a task gate): refused */
        movl    $0x20, %ebx
        movl    $0x00610000, %ecx
        movl    $0x8500, %edx
        call    hcall
        .endif
        .if BAD == 2
        movl    $LHCALL_SET_STACK, %eax         /* a kernel stack far outside RAM */
        movl    $KERNEL_DS, %ebx
        movl    $(PAGE_OFFSET + 0x10000000), %ecx
        movl    $1, %edx
        call    hcall
        .endif
        .if BAD == 3
        movl    $99, %eax                       /* no such hypercall */
        call    hcall
        .endif

        /* The IDT. */
        movl    $0x20, %ebx
        movl    $timer_interrupt, %esi
        movl    $INTERRUPT_GATE, %edi
        call    set_gate
        movl    $SYSCALL_VEC, %ebx
        movl    $system_call, %esi
        movl    $SYSCALL_GATE, %edi
        call    set_gate
        movl    $KERNEL_ONLY_VEC, %ebx          /* a gate user mode may not use */
        movl    $system_call, %esi
        movl    $KERNEL_TRAP_GATE, %edi
        call    set_gate
        movl    $13, %ebx
        movl    $general_protection, %esi
        movl    $INTERRUPT_GATE, %edi
        call    set_gate
        movl    $6, %ebx
        movl    $invalid_op, %esi
        movl    $INTERRUPT_GATE, %edi
        call    set_gate
        movl    $14, %ebx
        movl    $page_fault, %esi
        movl    $INTERRUPT_GATE, %edi
        call    set_gate
        movl    $0x21, %ebx                     /* IRQ 1: the Launcher's */
        movl    $irq1_interrupt, %esi
        movl    $INTERRUPT_GATE, %edi
        call    set_gate

        /* The kernel stack for traps from user mode. */
        movl    $LHCALL_SET_STACK, %eax
        movl    $KERNEL_DS, %ebx
        movl    $kstack_top, %ecx
        movl    $1, %edx
        call    hcall

        .if PAGE_OFFSET
        call    setup_paging
        .endif

        movl    $banner, %esi
        call    print

        /* The clock, then interrupts on. */
        movl    $LHCALL_SET_CLOCKEVENT, %eax
        movl    $TICK_NS, %ebx
        call    hcall
        movl    $0x200, lguest_data             /* irq_enabled = X86_EFLAGS_IF */

        /* To user mode: iret to ring 3 with the user's data segments loaded. */
        movw    $USER_DS, %ax
        movw    %ax, %ds
        movw    %ax, %es
        pushl   $USER_DS
        pushl   $user_stack_top
        pushl   $0x202
        pushl   $USER_CS
        pushl   $user_start
        iret

/* The user program has exited: report, idle until the clock has ticked
 * TICKS times, power off. */
after_user:
        movl    $kstack_top, %esp
        movl    $msg_syscalls, %esi
        call    print
        movl    syscall_count, %eax
        call    print_dec
        movl    $msg_newline, %esi
        call    print
1:      cmpl    $TICKS, ticks
        jae     2f
        movl    $LHCALL_HALT, %eax              /* wakes with the timer interrupt */
        call    hcall
        jmp     1b
2:      movl    $msg_ticks, %esi
        call    print
        movl    ticks, %eax
        call    print_dec
        movl    $msg_newline, %esi
        call    print
        movl    $msg_off, %esi
        call    print
        movl    $LHCALL_SHUTDOWN, %eax
        movl    $(msg_bye - PAGE_OFFSET), %ebx
        movl    $LGUEST_SHUTDOWN_POWEROFF, %ecx
        call    hcall
        jmp     .                               /* not reached: the host stops us */

/* --- helpers ------------------------------------------------------------ */

/* hcall: the one hypercall site (eax = call, ebx/ecx/edx = arguments). */
hcall:
        vmcall
        ret

/* set_gate: ebx = vector, esi = handler, edi = gate flags. */
set_gate:
        pushl   %eax
        pushl   %ecx
        pushl   %edx
        movl    $LHCALL_LOAD_IDT_ENTRY, %eax
        movl    %esi, %ecx
        andl    $0xFFFF, %ecx
        orl     $0x00610000, %ecx               /* the selector: __KERNEL_CS|1 */
        movl    %esi, %edx
        andl    $0xFFFF0000, %edx
        orl     %edi, %edx
        call    hcall
        popl    %edx
        popl    %ecx
        popl    %eax
        ret

/* print: esi = virtual address of a NUL-terminated string. */
print:
        pushl   %eax
        pushl   %ebx
        movl    $LHCALL_NOTIFY, %eax
        movl    %esi, %ebx
        subl    $PAGE_OFFSET, %ebx
        call    hcall
        popl    %ebx
        popl    %eax
        ret

/* print_dec / print_hex: eax = value. */
print_dec:
        pushl   %ecx
        movl    $10, %ecx
        jmp     print_num
print_hex:
        pushl   %ecx
        movl    $16, %ecx
print_num:
        pushl   %eax
        pushl   %edx
        pushl   %edi
        pushl   %esi
        movl    $numbuf_end, %edi
        movb    $0, (%edi)
1:      xorl    %edx, %edx
        divl    %ecx
        movb    digits(%edx), %dl
        decl    %edi
        movb    %dl, (%edi)
        testl   %eax, %eax
        jnz     1b
        cmpl    $16, %ecx
        jne     2f
        subl    $2, %edi
        movw    $0x7830, (%edi)                 /* "0x" */
2:      movl    %edi, %esi
        call    print
        popl    %esi
        popl    %edi
        popl    %edx
        popl    %eax
        popl    %ecx
        ret

/* --- interrupt and trap handlers ----------------------------------------- */

/* lguest_iret: return from an interrupt gate's handler.  The host entered
 * it with irq_enabled = 0; the saved eflags say whether the interrupted
 * code had interrupts on.  Between restoring irq_enabled and the iret an
 * interrupt would be delivered onto this very stack, so the host delivers
 * nothing while eip is in [noirq_start, noirq_end). */
lguest_iret:
        pushl   %eax
        movl    12(%esp), %eax                  /* the saved eflags */
noirq_start:
        movl    %eax, %ss:lguest_data           /* irq_enabled */
        popl    %eax
        iret
noirq_end:

/* IRQ 0: the clock.  Count the tick and arm the next one. */
timer_interrupt:
        pushl   %eax
        pushl   %ebx
        incl    ticks
        movl    $LHCALL_SET_CLOCKEVENT, %eax
        movl    $TICK_NS, %ebx
        call    hcall
        popl    %ebx
        popl    %eax
        jmp     lguest_iret

/* IRQ 1: whatever the Launcher sends. */
irq1_interrupt:
        pushl   %esi
        incl    irq1_count
        movl    $msg_irq1, %esi
        call    print
        .if IRQ1_WHERE
        pushl   %eax
        movl    $msg_at_spin, %esi
        call    print
        movl    spins, %eax
        call    print_dec
        movl    $msg_newline, %esi
        call    print
        popl    %eax
        .endif
        popl    %esi
        jmp     lguest_iret

/* The system call gate (a DPL-3 trap gate: irq_enabled is untouched, so a
 * plain iret returns). */
system_call:
        cmpl    $SYS_COUNT, %eax
        jne     1f
        incl    syscall_count
        iret
1:      cmpl    $SYS_WRITE, %eax
        jne     2f
        pushl   %esi
        movl    %ebx, %esi
        call    print
        popl    %esi
        incl    syscall_count
        xorl    %eax, %eax
        iret
2:      cmpl    $SYS_EXIT, %eax
        jne     3f
        incl    syscall_count
        jmp     after_user
3:      cmpl    $SYS_HEX, %eax
        jne     4f
        pushl   %esi
        movl    %ebx, %eax
        call    print_hex
        movl    $msg_newline, %esi
        call    print
        popl    %esi
        incl    syscall_count
        xorl    %eax, %eax
        iret
4:      movl    $-1, %eax
        iret

general_protection:                             /* interrupt gate; error code pushed */
        pushl   %eax
        pushl   %ebx
        pushl   %esi
        movl    12(%esp), %eax                  /* the error code */
        movl    $msg_gp, %esi
        movl    $4, %ebx
        call    fault_common
        popl    %esi
        popl    %ebx
        popl    %eax
        addl    $4, %esp                        /* drop the error code */
        jmp     lguest_iret

invalid_op:                                     /* interrupt gate; no error code */
        pushl   %eax
        pushl   %ebx
        pushl   %esi
        movl    12(%esp), %eax                  /* the faulting eip */
        movl    $msg_ud, %esi
        xorl    %ebx, %ebx
        call    fault_common
        popl    %esi
        popl    %ebx
        popl    %eax
        jmp     lguest_iret

page_fault:                                     /* interrupt gate; error code pushed */
        pushl   %eax
        pushl   %ebx
        pushl   %esi
        movl    lguest_data + 8, %eax           /* cr2, written there by the host */
        movl    $msg_pf, %esi
        movl    $4, %ebx
        call    fault_common
        popl    %esi
        popl    %ebx
        popl    %eax
        addl    $4, %esp
        jmp     lguest_iret

/* A fault must come from user mode: print its name (esi) and eax, then
 * skip the faulting instruction, whose length the user program put in edi.
 * A fault in the kernel is fatal. */
/* fault_common: the CPU's frame starts at 16(%esp), above the return
 * address and the handler's esi, ebx, eax; ebx = 4 if an error code sits
 * below eip. */
fault_common:
        testl   $3, 20(%esp,%ebx)               /* the frame's cs */
        jz      kernel_fault
        call    print
        call    print_hex
        movl    $msg_newline, %esi
        call    print
        addl    %edi, 16(%esp,%ebx)             /* the frame's eip += edi */
        ret

kernel_fault:
        movl    $LHCALL_SHUTDOWN, %eax
        movl    $(msg_kernel_fault - PAGE_OFFSET), %ebx
        movl    $LGUEST_SHUTDOWN_POWEROFF, %ecx
        call    hcall
        jmp     .

        .if PAGE_OFFSET
/* Our own page tables: RAM at PAGE_OFFSET only, kernel pages supervisor,
 * the user section user-accessible; then NEW_PGTABLE. */
setup_paging:
        movl    $((PAGE_OFFSET >> 22) * 4 + kpgd), %edi
        movl    $(kpt - PAGE_OFFSET + 0x7), (%edi)
        movl    $kpt, %edi
        xorl    %ecx, %ecx
1:      movl    %ecx, %eax
        shll    $12, %eax
        orl     $0x3, %eax                      /* present, writable, supervisor */
        leal    PAGE_OFFSET(%eax), %edx
        cmpl    $user_begin, %edx
        jb      2f
        cmpl    $user_end, %edx
        jae     2f
        orl     $0x4, %eax                      /* the user program's pages */
2:      movl    %eax, (%edi,%ecx,4)
        incl    %ecx
        cmpl    $1024, %ecx
        jb      1b
        movl    $LHCALL_NEW_PGTABLE, %eax
        movl    $(kpgd - PAGE_OFFSET), %ebx
        call    hcall
        ret
        .endif

/* --- the user program (ring 3) ------------------------------------------ */
        .section .user, "awx"
        .balign 4096
user_begin:
user_start:
        movl    $SYS_WRITE, %eax
        movl    $msg_hello, %ebx
        int     $SYSCALL_VEC

        movl    $NSYSCALLS, %ecx                /* the system call loop */
1:      movl    $SYS_COUNT, %eax
        int     $SYSCALL_VEC
        loop    1b

        movl    $(user_cli - user_int_gp), %edi  /* the faults: edi = length to skip */
user_int_gp:
        int     $KERNEL_ONLY_VEC                /* #GP(0x81*8+2): a DPL 0 gate */
user_cli:
        movl    $(user_ud2 - user_cli_insn), %edi
user_cli_insn:
        cli                                     /* #GP(0): IOPL is 0 */
user_ud2:
        movl    $(user_pf - user_ud2_insn), %edi
user_ud2_insn:
        ud2                                     /* #UD */
user_pf:
        movl    $(user_pf_done - user_pf_insn), %edi
user_pf_insn:
        .if PAGE_OFFSET
        movl    banner, %eax                    /* #PF: a supervisor page */
        .else
        movl    0x10000000, %eax                /* #PF: no RAM there */
        .endif
user_pf_done:
        .if RDTSC
        movl    $RDTSC, %esi                    /* read the TSC: rdtsc, rdtscp in turn */
7:      testl   $1, %esi
        jz      5f
        rdtsc
        jmp     6f
5:      rdtscp
6:      movl    %eax, %ebx
        movl    $SYS_HEX, %eax
        int     $SYSCALL_VEC
        movl    $RDTSC_GAP, %ecx                /* and let time pass */
        loop    .
        decl    %esi
        jnz     7b
        .endif
        .if WAIT_IRQ1
        movl    $msg_waiting, %ebx              /* wait for the Launcher's irq 1 */
        movl    $SYS_WRITE, %eax
        int     $SYSCALL_VEC
9:      incl    spins
        cmpl    $WAIT_IRQ1, irq1_count
        jb      9b
        .endif

        movl    ticks, %esi                     /* wait for two clock ticks here */
        addl    $2, %esi
2:      cmpl    %esi, ticks
        jb      2b

        movl    $SYS_WRITE, %eax
        movl    $msg_user_done, %ebx
        int     $SYSCALL_VEC
        movl    $SYS_EXIT, %eax
        int     $SYSCALL_VEC
        jmp     .

        .balign 4
ticks:          .long 0                         /* the kernel counts, user mode reads */
irq1_count:     .long 0
spins:          .long 0                         /* turns of the wait for irq 1 */
msg_waiting:    .asciz "waiting for irq 1\n"
msg_hello:      .asciz "hello from user mode\n"
msg_user_done:  .asciz "user mode done\n"
        .balign 4096
user_stack:     .fill 4096, 1, 0
user_stack_top:
user_end:

/* --- data ---------------------------------------------------------------- */
        .data
        .balign 4096
/* struct lguest_data (include/linux/lguest.h of early 2009): 1136 bytes */
lguest_data:
ld_irq_enabled:         .long 0                 /* interrupts off until we are ready */
ld_blocked_interrupts:  .long 0
ld_cr2:                 .long 0
ld_time:                .long 0, 0
ld_hcall_status:        .fill 64, 1, 0xff       /* the async ring starts empty */
ld_hcalls:              .fill 64 * 16, 1, 0
ld_reserve_mem:         .long 0
ld_tsc_khz:             .long 0
ld_pgdir:               .long 0
ld_noirq_start:         .long noirq_start
ld_noirq_end:           .long noirq_end
ld_kernel_address:      .long PAGE_OFFSET
ld_syscall_vec:         .long SYSCALL_VEC
lguest_data_end:
        .if (ld_syscall_vec - lguest_data) - 1132
        .error "struct lguest_data layout"
        .endif
        .if (lguest_data_end - lguest_data) - 1136
        .error "struct lguest_data size"
        .endif

syscall_count:  .long 0
digits:         .ascii "0123456789abcdef"
banner:         .asciz "lguest example guest: booted\n"
msg_gp:         .asciz "user #GP, eax/err="
msg_ud:         .asciz "user #UD at "
msg_pf:         .asciz "user #PF at "
msg_syscalls:   .asciz "system calls: "
msg_ticks:      .asciz "clock ticks: "
msg_off:        .asciz "powering off\n"
msg_irq1:       .asciz "irq 1\n"
msg_at_spin:    .asciz "  at spin "
msg_newline:    .asciz "\n"
msg_bye:        .asciz "bye"
msg_kernel_fault: .asciz "kernel fault"
numbuf:         .fill 16, 1, 0
numbuf_end:     .byte 0

        .bss
        .balign 4096
kstack:         .fill 4096, 1, 0
kstack_top:
        .if PAGE_OFFSET
kpgd:           .fill 4096, 1, 0
kpt:            .fill 4096, 1, 0
        .endif
