/* Never ends: for --timeout. */
void _start(void) { for (;;) __asm__ volatile(""); }
