/* Says it runs, then never ends: for --timeout and the signal tests. */
#include "sys.h"

void _start(void)
{
    out("spinning\n");
    for (;;)
        __asm__ volatile("");
}
