/* Fused CPU kernels for the golden-model quantizers, and one exact integer convolution kernel for
 * host.gemm (host/quant/native.py builds and loads this file).
 *
 * Each function is one pass over a tensor computing what a chain of elementwise torch passes in
 * host/quant computes, with the same integer operations and the same correctly rounded IEEE float
 * operations (built with -ffp-contract=off, no fast-math), so the results are bit for bit those of the
 * torch code; tests/test_native.py checks that. No libm function is used.
 */
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* x86-64's baseline (SSE2) has no vector double -> int32 conversion the compiler will use for these
 * loops; AVX2 has. VECTOR_CLONES builds a kernel twice, baseline and AVX2, and the loader picks the one
 * the CPU runs (GNU ifunc). The same IEEE operations either way: no FMA (not enabled, and
 * -ffp-contract=off), no fast-math. -DTETRAD_NO_VECTOR_CLONES builds the baseline only (the tests
 * check both builds). */
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__)) \
    && !defined(TETRAD_NO_VECTOR_CLONES)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* Thomas Wang's hash64shift, modulo 2**64 (hw.numerics.rng_mix64; host.quant.rng._mix64_). */
static inline uint64_t mix64(uint64_t x) {
    x = ~x + (x << 21);
    x ^= x >> 24;
    x *= 265u;
    x ^= x >> 14;
    x *= 21u;
    x ^= x >> 28;
    x += x << 31;
    return x;
}

/* The signed draws offset .. offset+count-1 of stream `seed` (host.quant.rng._signed_fields): draw d
 * is field d % (64 / bits), from the least significant bits, of word d / (64 / bits), read as a
 * two's-complement `bits`-bit integer. Fills buf (CHUNK + 32 entries: up to 15 skipped draws before and
 * 15 past the end) with every field of the words holding them, count <= CHUNK, and returns a pointer to
 * draw `offset`. `bits` is a constant in each inlined copy, so the inner loop is fixed shifts. */
#define CHUNK 1024
static inline const int32_t *draws_bits(uint64_t seed, uint64_t offset, int64_t count, const int bits,
                                        int32_t *buf) {
    const int per_word = 64 / bits;
    const uint64_t mask = ((uint64_t)1 << bits) - 1, half = (uint64_t)1 << (bits - 1);
    const uint64_t first = offset / (uint64_t)per_word;
    const int64_t skip = (int64_t)(offset % (uint64_t)per_word);
    const int64_t n_words = (skip + count + per_word - 1) / per_word;
    for (int64_t k = 0; k < n_words; ++k) {
        const uint64_t w = mix64((seed << 32) + first + (uint64_t)k);
        for (int j = 0; j < per_word; ++j)
            buf[k * per_word + j] = (int32_t)(int64_t)((((w >> (j * bits)) & mask) ^ half) - half);
    }
    return buf + skip;
}

static const int32_t *signed_draws(uint64_t seed, uint64_t offset, int64_t count, int bits, int32_t *buf) {
    switch (bits) {
        case 16: return draws_bits(seed, offset, count, 16, buf);
        case 8: return draws_bits(seed, offset, count, 8, buf);
        default: return draws_bits(seed, offset, count, 4, buf);
    }
}

/* host.quant.rng.uniform in float32 (T = float) and float64 (T = double):
 * u = s * 2**-bits + (1/2 + 2**-(bits+1)), exact for bits <= 16 in both. */
#define DEFINE_UNIFORM(NAME, T)                                                                    \
    void NAME(uint64_t seed, uint64_t offset, int64_t count, int bits, T *out) {                   \
        int32_t buf[CHUNK + 32];                                                                   \
        const T scale = (T)1 / (T)((int64_t)1 << bits);                                            \
        const T shift = (T)0.5 + scale * (T)0.5;                                                   \
        for (int64_t base = 0; base < count; base += CHUNK) {                                      \
            const int64_t n = count - base < CHUNK ? count - base : CHUNK;                         \
            const int32_t *s = signed_draws(seed, offset + (uint64_t)base, n, bits, buf);          \
            for (int64_t i = 0; i < n; ++i)                                                        \
                out[base + i] = (T)s[i] * scale + shift;                                           \
        }                                                                                          \
    }

DEFINE_UNIFORM(tetrad_uniform_f32, float)
DEFINE_UNIFORM(tetrad_uniform_f64, double)

/* clamp(floor(q), lo, hi) for integer lo <= hi in int32 range, branch-free so that the loop vectorizes
 * (SSE2 has no vector floor): clamping first is the same (floor is monotone and fixes integers), then
 * the truncation toward zero of the clamped q (exact, it fits int32) is floor(q) unless it lies above
 * q (negative non-integers), where floor is one less. */
static inline int32_t floor_clamp(double q, double lo, double hi) {
    q = q < lo ? lo : q;
    q = q > hi ? hi : q;
    const int32_t t = (int32_t)q;
    return t - ((double)t > q);
}

/* One block of host.quant.core.sr_codes: codes[i] = clamp(floor((double)v[i] + (double)u_i), lo, hi) with
 * u_i = s[i] * scale + shift in float32. A function per code type, not inlined: inlined into the
 * caller, the loop does not vectorize (GCC 12). */
#define SR_BLOCK(NAME, T)                                                                            \
    VECTOR_CLONES __attribute__((noinline)) static void NAME(                                       \
            const float *restrict v, const int32_t *restrict s, int64_t n, float scale, float shift, \
            double lo, double hi, T *restrict codes) {                                              \
        for (int64_t i = 0; i < n; ++i)                                                             \
            codes[i] = (T)floor_clamp((double)v[i] + (double)((float)s[i] * scale + shift), lo, hi); \
    }
SR_BLOCK(sr_block_i8, int8_t)
SR_BLOCK(sr_block_i16, int16_t)

/* host.quant.core.sr_codes for float32 v: clamp(floor((double)v + (double)u), lo, hi) as int8
 * (code_bytes 1) or int16 (code_bytes 2), u the uniforms of draws offset .. of stream `seed`. The float64
 * sum is correctly rounded as in torch (exact for |v| < 2**35). */
void tetrad_sr_codes_f32(const float *v, int64_t count, uint64_t seed, uint64_t offset, int bits,
                         int32_t lo, int32_t hi, int code_bytes, void *codes) {
    int32_t buf[CHUNK + 32];
    const double dlo = (double)lo, dhi = (double)hi;
    const float scale = 1.0f / (float)((int64_t)1 << bits);
    const float shift = 0.5f + scale * 0.5f;
    for (int64_t base = 0; base < count; base += CHUNK) {
        const int64_t n = count - base < CHUNK ? count - base : CHUNK;
        const int32_t *s = signed_draws(seed, offset + (uint64_t)base, n, bits, buf);
        if (code_bytes == 1)
            sr_block_i8(v + base, s, n, scale, shift, dlo, dhi, (int8_t *)codes + base);
        else
            sr_block_i16(v + base, s, n, scale, shift, dlo, dhi, (int16_t *)codes + base);
    }
}

/* host.quant.luq._log_sr_codes for float32 input with |codes| <= 8 (the "narrow" case), the draws of
 * stream `seed` from `offset` fused in (or u = 1/2 everywhere when rdn != 0).
 *
 * Writes the signed int8 codes. An element whose rounded quotient lands on the SR threshold (zero
 * mantissa after the add) is left to the exact re-decision of host.quant.luq._resolve_exact: its flat
 * index goes to amb_idx and its u to amb_u, its code is written unsigned; returns how many there are. */
int64_t tetrad_luq_codes_f32(const float *x, int64_t count, float alpha, uint64_t seed, uint64_t offset,
                             int bits, int rdn, int8_t *codes, int64_t *amb_idx, float *amb_u) {
    int32_t buf[CHUNK + 32];
    const float scale = 1.0f / (float)((int64_t)1 << bits);
    const float shift = 0.5f + scale * 0.5f;
    int64_t n_amb = 0;
    for (int64_t base = 0; base < count; base += CHUNK) {
        const int64_t n = count - base < CHUNK ? count - base : CHUNK;
        const int32_t *s = rdn ? buf : signed_draws(seed, offset + (uint64_t)base, n, bits, buf);
        for (int64_t i = 0; i < n; ++i) {
            uint32_t xb;
            memcpy(&xb, &x[base + i], sizeof xb);
            const int neg = (int)(xb >> 31);               /* signbit */
            xb &= 0x7FFFFFFFu;
            float y;
            memcpy(&y, &xb, sizeof y);                     /* |x| */
            const float u = rdn ? 0.5f : (float)s[i] * scale + shift;
            y = y / alpha;
            const float z = 0.5f + 0.5f * y;               /* (y + 1) / 2 */
            if (z > y)
                y = z;
            int32_t b;
            memcpy(&b, &y, sizeof b);
            b += (int32_t)(u * 8388608.0f);                /* R = u * 2**23, an exact integer */
            const uint8_t mag = (uint8_t)((uint8_t)(b >> 23) - 126u);
            if ((b & 0x7FFFFF) == 0) {
                amb_idx[n_amb] = base + i;
                amb_u[n_amb] = u;
                ++n_amb;
                codes[base + i] = (int8_t)mag;
            } else {
                codes[base + i] = (int8_t)(neg ? -(int8_t)mag : (int8_t)mag);
            }
        }
    }
    return n_amb;
}

/* One term of tetrad_conv_wgrad_i8: a[0..m) += sum_t xs[t * sw] * g[t * m + 0..m) over len positions,
 * in int32. A copy per common m (a compile-time constant: the m-loop becomes a few vector operations)
 * and a generic one. */
#define WGRAD_TERM(NAME, M_ARG, M)                                                                  \
    static inline void NAME(const int8_t *restrict xs, int64_t sw, const int8_t *restrict g,       \
                            int64_t len, M_ARG, int32_t *restrict a) {                             \
        int32_t s[WGRAD_MAX_M] = {0};                                                              \
        for (int64_t t = 0; t < len; ++t) {                                                        \
            const int32_t xv = xs[t * sw];                                                         \
            const int8_t *gp = g + t * (M);                                                        \
            for (int64_t k = 0; k < (M); ++k)                                                      \
                s[k] += xv * (int32_t)gp[k];                                                       \
        }                                                                                          \
        for (int64_t k = 0; k < (M); ++k)                                                          \
            a[k] += s[k];                                                                          \
    }
#define WGRAD_MAX_M 64
WGRAD_TERM(wgrad_term_8, int64_t unused, 8)
WGRAD_TERM(wgrad_term_16, int64_t unused, 16)
WGRAD_TERM(wgrad_term_32, int64_t unused, 32)
WGRAD_TERM(wgrad_term_64, int64_t unused, 64)
WGRAD_TERM(wgrad_term_any, int64_t m, m)

/* host.gemm.qconv2d_weight for int8 activation codes x (n, c, h, w) and int8 gradient values g
 * (n*ho*wo, m), both contiguous, m <= WGRAD_MAX_M: out (c*kh*kw, m) = im2col(x)^T g exactly, as int64.
 * Each term sums at most one output row (wo <= WGRAD_MAX_ROW products of magnitude <= 2**14) in int32
 * and adds it to int32 accumulators, which are flushed into the int64 result before WGRAD_MAX_ROW
 * positions have gone in: no partial sum reaches 2**31 and nothing is rounded, so any order gives the
 * same integers. The int32 scratch (c*kh*kw*m entries) comes from the caller. Padding adds nothing. */
#define WGRAD_MAX_ROW 131071
VECTOR_CLONES
void tetrad_conv_wgrad_i8(const int8_t *x, const int8_t *g, int64_t n, int64_t c, int64_t h, int64_t w,
                          int64_t m, int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t ph, int64_t pw,
                          int64_t sh, int64_t sw, int64_t ho, int64_t wo, int32_t *acc, int64_t *out) {
    const int64_t kk = c * kh * kw;
    memset(out, 0, (size_t)(kk * m) * sizeof *out);
    memset(acc, 0, (size_t)(kk * m) * sizeof *acc);
    int64_t pending = 0;
    for (int64_t b = 0; b < n; ++b)
        for (int64_t oh = 0; oh < ho; ++oh) {
            if (pending + wo > WGRAD_MAX_ROW) {
                for (int64_t k = 0; k < kk * m; ++k) {
                    out[k] += acc[k];
                    acc[k] = 0;
                }
                pending = 0;
            }
            pending += wo;
            const int8_t *grow = g + (b * ho + oh) * wo * m;
            for (int64_t ci = 0; ci < c; ++ci)
                for (int64_t i = 0; i < kh; ++i) {
                    const int64_t r = oh * sh - ph + i * dh;
                    if (r < 0 || r >= h)
                        continue;
                    const int8_t *xr = x + ((b * c + ci) * h + r) * w;
                    for (int64_t j = 0; j < kw; ++j) {
                        /* output columns ow whose input column ow*sw + off lies in [0, w) */
                        const int64_t off = j * dw - pw;
                        if (w - 1 - off < 0)
                            continue;
                        const int64_t lo = off >= 0 ? 0 : (-off + sw - 1) / sw;
                        const int64_t hi = (w - 1 - off) / sw < wo - 1 ? (w - 1 - off) / sw : wo - 1;
                        if (hi < lo)
                            continue;
                        const int8_t *xs = xr + lo * sw + off, *gs = grow + lo * m;
                        int32_t *a = acc + ((ci * kh + i) * kw + j) * m;
                        const int64_t len = hi - lo + 1;
                        switch (m) {
                            case 8: wgrad_term_8(xs, sw, gs, len, m, a); break;
                            case 16: wgrad_term_16(xs, sw, gs, len, m, a); break;
                            case 32: wgrad_term_32(xs, sw, gs, len, m, a); break;
                            case 64: wgrad_term_64(xs, sw, gs, len, m, a); break;
                            default: wgrad_term_any(xs, sw, gs, len, m, a);
                        }
                    }
                }
        }
    for (int64_t k = 0; k < kk * m; ++k)
        out[k] += acc[k];
}

#ifdef __cplusplus
}
#endif
