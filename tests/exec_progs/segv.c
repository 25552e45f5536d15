/* A write to a read-only page: SIGSEGV (status 139 under lguest exec). */
#include "sys.h"

void _start(void)
{
    out("before\n");
    char *m = (char *)sys6(192, 0, 4096, 1, 0x22, -1, 0);
    m[0] = 1;
    out("after\n");
    exit_(0);
}
