/* System calls through the host's --syscall-vector (SYSCALL_INSN is
 * "int $0x40" in this build), and one through int $0x80 too. */
#include "sys.h"

void _start(void)
{
    out("through the vector\n");
    int r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(4), "b"(1), "c"("and 0x80\n"), "d"(9) : "memory");
    exit_(7);
}
