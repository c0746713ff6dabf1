/* xoshiro256** with splitmix64 seeding (see rng.h). */
#include "common/rng.h"

#include <math.h>

uint64_t td_mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = td_mix64(*x);
    *x += 0x9e3779b97f4a7c15ULL;
    return z;
}

void td_rng_seed(td_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

uint64_t td_rng_u64(td_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float td_rng_uniform(td_rng *r) {
    return (float)(td_rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}

double td_rng_uniform_f64(td_rng *r) {
    return (double)(td_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

double td_rng_normal(td_rng *r) {
    double u1 = td_rng_uniform_f64(r), u2 = td_rng_uniform_f64(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

uint64_t td_rng_below(td_rng *r, uint64_t n) {
    return n ? td_rng_u64(r) % n : 0;
}
