/* The 64-bit division helpers gcc calls on i386 (no 32-bit libgcc here). */
typedef unsigned long long u64;
typedef long long s64;

u64 __udivmoddi4(u64 n, u64 d, u64 *rem)
{
    u64 q = 0;
    int shift;
    if (d == 0) {           /* the kernel never divides by zero; be total anyway */
        if (rem) *rem = n;
        return ~0ULL;
    }
    if (d > n) {
        if (rem) *rem = n;
        return 0;
    }
    /* shift-subtract: align d's top bit under n's, then walk down */
    shift = __builtin_clzll(d) - __builtin_clzll(n);
    d <<= shift;
    for (; shift >= 0; shift--, d >>= 1) {
        q <<= 1;
        if (n >= d) {
            n -= d;
            q |= 1;
        }
    }
    if (rem) *rem = n;
    return q;
}

u64 __udivdi3(u64 n, u64 d) { return __udivmoddi4(n, d, 0); }
u64 __umoddi3(u64 n, u64 d) { u64 r; __udivmoddi4(n, d, &r); return r; }

s64 __divdi3(s64 n, s64 d)
{
    int neg = (n < 0) ^ (d < 0);
    u64 q = __udivmoddi4(n < 0 ? -(u64)n : (u64)n, d < 0 ? -(u64)d : (u64)d, 0);
    return neg ? -(s64)q : (s64)q;
}

s64 __moddi3(s64 n, s64 d)
{
    u64 r;
    __udivmoddi4(n < 0 ? -(u64)n : (u64)n, d < 0 ? -(u64)d : (u64)d, &r);
    return n < 0 ? -(s64)r : (s64)r;
}
