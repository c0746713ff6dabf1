/* Deterministic random numbers: xoshiro256** seeded through splitmix64. The whole state is
 * four 64-bit words, saved in checkpoints so a resumed run draws the same numbers. */
#ifndef TD_RNG_H
#define TD_RNG_H
#include <stdint.h>
typedef struct {
    uint64_t s[4];
} td_rng;
void td_rng_seed(td_rng *r, uint64_t seed);
uint64_t td_rng_u64(td_rng *r);
/* Uniform in [0, 1) with 24 bits (float) or 53 bits (double). */
float td_rng_uniform(td_rng *r);
double td_rng_uniform_f64(td_rng *r);
/* Standard normal (Box-Muller). */
double td_rng_normal(td_rng *r);
/* Uniform integer in [0, n). */
uint64_t td_rng_below(td_rng *r, uint64_t n);
/* splitmix64's output function of z (stateless: counter-based random numbers, e.g. LoRA
 * dropout masks): z += 0x9e3779b97f4a7c15, then two xor-shift-multiply rounds. */
uint64_t td_mix64(uint64_t z);
#endif
