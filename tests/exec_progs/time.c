#include "sys.h"
void _start(void)
{
    u32 ts[4] = {0, 0, 0, 0};
    kv("clock_gettime(REALTIME)", sys2(265, 0, ts));
    kv("realtime plausible", ts[0] > 1600000000u && ts[1] < 1000000000u);
    kv("clock_gettime64(REALTIME)", sys2(403, 0, ts));
    kv("realtime64 plausible", ts[0] > 1600000000u && ts[1] == 0 && ts[2] < 1000000000u);
    kv("clock_gettime(MONOTONIC)", sys2(265, 1, ts));
    u32 t1 = ts[0];
    kv("clock_gettime(bad clock)", sys2(265, 99, ts));
    kv("clock_gettime(bad pointer)", sys2(265, 0, 16));
    u32 tv[2];
    kv("gettimeofday", sys2(78, tv, 0));
    kv("gettimeofday plausible", tv[0] > 1600000000u && tv[1] < 1000000u);
    u32 tt = 0;
    int t = sys1(13, &tt);
    kv("time agrees", t == (int)tt && tt > 1600000000u);
    u32 req[2] = {0, 20000000};
    kv("nanosleep", sys2(162, req, 0));
    req[1] = 2000000000u;
    kv("nanosleep(bad nsec)", sys2(162, req, 0));
    sys2(265, 1, ts);
    kv("monotonic moved", ts[0] >= t1);
    exit_(0);
}
