/* The layout shared by the guest kernel and the host side
 * (lguest/guestos/layout.py mirrors every number here). */
#ifndef LGK_KERNEL_H
#define LGK_KERNEL_H

#define PAGE_OFFSET     0xC0000000u
#define PAGE_SIZE       4096u

/* guest-physical addresses */
#define BOOTINFO_PA     0x1000u     /* struct bootinfo: host -> kernel, results back */
#define CONS_PA         0x2000u     /* the console device page: NOTIFY this address */
#define RING_OUT_PA     0x10000u    /* stdout ring, then stderr ring: RING_SIZE each */
#define RING_IN_PA      0x30000u    /* stdin buffer: RING_SIZE */
#define RING_SIZE       0x10000u    /* a power of two */
#define KERNEL_PA       0x100000u

#define BOOT_MAGIC      0x5845474cu /* "LGEX" */

/* bootinfo.flags */
#define BF_EXPORT       1u          /* write the final tree (cpio) for --export */
#define BF_STDIN_TTY    2u
#define BF_STDOUT_TTY   4u
#define BF_STDERR_TTY   8u

/* bootinfo.result */
#define R_NONE          0u          /* still running (or the kernel died) */
#define R_EXIT          1u          /* status = exit code */
#define R_SIGNAL        2u          /* status = signal number */
#define R_NOTFOUND      3u
#define R_NOEXEC        4u
#define R_NOMEM         5u

#define NSYSCALLS       512u        /* counted by number; larger numbers in the last slot */

/* Kernel-internal (the host never sees these): what entry.S's read/write
 * fast path reads of kernel.c's structures, each checked there by a
 * _Static_assert.  struct file: */
#define KF_INO          0
#define KF_POS_LO       4
#define KF_POS_HI       8
#define KF_FLAGS        12
/* struct inode: */
#define KI_MODE         0
#define KI_DEV          16
#define KI_DATA         44
#define KI_SIZE         48
#define KI_CAP          52
#define KMAX_FDS        256
#define FAST_MAX        8           /* the fast path copies at most this many bytes (a loop turn each) */

#ifndef __ASSEMBLER__
typedef unsigned int u32;
typedef int s32;
typedef unsigned long long u64;
typedef long long s64;
typedef unsigned short u16;
typedef unsigned char u8;

/* struct lguest_data (include/linux/lguest.h, early 2009): 1136 bytes. */
struct lguest_data {
    u32 irq_enabled, blocked_interrupts, cr2;
    u32 time_sec, time_nsec;
    u8 hcall_status[64];
    u32 hcalls[64][4];
    u32 reserve_mem, tsc_khz, pgdir, noirq_start, noirq_end, kernel_address, syscall_vec;
};
_Static_assert(sizeof(struct lguest_data) == 1136, "lguest_data layout");

struct bootinfo {                   /* 32 u32s written by the host, then results */
    u32 magic;
    u32 mem_size;
    u32 image_pa, image_len;        /* newc cpio of the root */
    u32 args_pa, args_len;          /* program\0 argv1\0 ... \0 | env\0 ...: argc + envc strings */
    u32 argc, envc;
    u32 syscall_vector;
    u32 tick_ns;
    u32 epoch_sec;                  /* CLOCK_REALTIME at guest time 0 */
    u32 seed_lo, seed_hi;
    u32 flags;
    u32 tty_rows, tty_cols;
    u32 alloc_limit_pa;             /* the kernel's page allocator stops here */
    u32 reserved_in[15];
    /* results (kernel -> host) */
    u32 result, status;
    u32 export_pa, export_len;      /* --export: export_len pieces {pa, len} at export_pa, a newc cpio joined */
    u32 counts_pa, enosys_pa;       /* u32[NSYSCALLS] each */
    u32 pages_used, pages_total;
    u32 reserved_out[8];
};

struct cons_page {
    u32 magic;
    u32 out_head[2];                /* producer (kernel) counters, free-running: stdout, stderr */
    u32 out_tail[2];                /* consumer (host) counters */
    u32 in_head;                    /* producer (host) */
    u32 in_tail;                    /* consumer (kernel) */
    u32 in_want;                    /* kernel: bytes it would take; host reads stdin when non-zero */
    u32 in_eof;                     /* host: stdin is at end of file */
    u32 in_nowait;                  /* kernel, with in_want: take only what stdin has now (poll) */
    u32 in_hup;                     /* host: stdin's writer is gone (what is left is all there is) */
};
#endif
#endif
