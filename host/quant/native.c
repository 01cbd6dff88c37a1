/* Fused CPU kernels for the golden-model quantizers, and one exact integer convolution kernel for
 * host.gemm (host/quant/native.py builds and loads this file).
 *
 * Each function is one pass over a tensor computing what a chain of elementwise torch passes in
 * host/quant computes, with the same integer operations and the same correctly rounded IEEE float
 * operations (built with -ffp-contract=off, no fast-math), so the results are bit for bit those of the
 * torch code; tests/test_native.py checks that. No libm function is used.
 */
#include <float.h>
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

/* AVX2 intrinsics for two integer kernels (conv B columns, the INT8 weight gradient), picked at run time
 * where the CPU has AVX2 (else, and in the baseline-only build, their portable forms). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(TETRAD_NO_VECTOR_CLONES)
#include <immintrin.h>
#define BG_MADD 1
static int bg_have_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#else
#define BG_MADD 0
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

#if BG_MADD
/* mix64 of four 64-bit lanes with AVX2: its multiplies by 265 and 21 as shifts and adds, modulo 2**64 as
 * the scalar code (the compiler does not vectorize mix64's 64-bit multiplies itself). */
__attribute__((target("avx2"))) static inline __m256i mix64_avx2(__m256i x) {
    x = _mm256_add_epi64(_mm256_xor_si256(x, _mm256_set1_epi64x(-1)), _mm256_slli_epi64(x, 21));
    x = _mm256_xor_si256(x, _mm256_srli_epi64(x, 24));
    x = _mm256_add_epi64(_mm256_add_epi64(x, _mm256_slli_epi64(x, 3)), _mm256_slli_epi64(x, 8));
    x = _mm256_xor_si256(x, _mm256_srli_epi64(x, 14));
    x = _mm256_add_epi64(_mm256_add_epi64(x, _mm256_slli_epi64(x, 2)), _mm256_slli_epi64(x, 4));
    x = _mm256_xor_si256(x, _mm256_srli_epi64(x, 28));
    return _mm256_add_epi64(x, _mm256_slli_epi64(x, 31));
}

/* draws_bits for bits = 16 with AVX2: four words per step, their sixteen 16-bit fields sign-extended in
 * draw order (little-endian lanes: field j of word k is lane 4k + j); the scalar mix64 covers the last
 * words. The draws cost as much as the rounding they feed. */
__attribute__((target("avx2"))) static const int32_t *draws16_avx2(uint64_t seed, uint64_t offset,
                                                                   int64_t count, int32_t *buf) {
    const uint64_t first = offset / 4u;
    const int64_t skip = (int64_t)(offset % 4u);
    const int64_t n_words = (skip + count + 3) / 4;
    const __m256i step = _mm256_set1_epi64x(4);
    __m256i w0 = _mm256_add_epi64(_mm256_set1_epi64x((long long)((seed << 32) + first)),
                                  _mm256_setr_epi64x(0, 1, 2, 3));
    int64_t k = 0;
    for (; k + 4 <= n_words; k += 4, w0 = _mm256_add_epi64(w0, step)) {
        const __m256i x = mix64_avx2(w0);
        _mm256_storeu_si256((__m256i *)(buf + 4 * k), _mm256_cvtepi16_epi32(_mm256_castsi256_si128(x)));
        _mm256_storeu_si256((__m256i *)(buf + 4 * k + 8), _mm256_cvtepi16_epi32(_mm256_extracti128_si256(x, 1)));
    }
    for (; k < n_words; ++k) {
        const uint64_t w = mix64((seed << 32) + first + (uint64_t)k);
        for (int j = 0; j < 4; ++j)
            buf[4 * k + j] = (int32_t)(int16_t)(uint16_t)(w >> (16 * j));
    }
    return buf + skip;
}
#endif

static const int32_t *signed_draws(uint64_t seed, uint64_t offset, int64_t count, int bits, int32_t *buf) {
    switch (bits) {
        case 16:
#if BG_MADD
            if (bg_have_avx2())
                return draws16_avx2(seed, offset, count, buf);
#endif
            return draws_bits(seed, offset, count, 16, buf);
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
SR_BLOCK(sr_block_i16, int16_t)

/* sr_block for int8 codes, in float32 and integer operations (eight lanes with AVX2, not four): the
 * uniform is u = m * 2**-(bits+1) with the odd integer m = 2 s + 2**bits + 1, and for any real v
 * floor(v + u) = (floor(v * 2**(bits+1)) + m) >> (bits+1) (an integer plus a fraction below 1 crosses no
 * multiple of 2**(bits+1)), so the exact float64 sum is not needed. v is first clamped to
 * [lo - 1, hi + 1] (the codes are the same: clamp(floor(v + u), lo, hi) is monotone in v and already
 * lo / hi at those ends), which keeps |v * 2**(bits+1)| <= 129 * 2**17 < 2**31: the scaling by a power
 * of two is exact, and so are the truncating conversion to int32 and the floor built from it as in
 * floor_clamp. */
VECTOR_CLONES __attribute__((noinline)) static void sr_block_i8(
        const float *restrict v, const int32_t *restrict s, int64_t n, int bits, int32_t lo, int32_t hi,
        int8_t *restrict codes) {
    const float flo = (float)(lo - 1), fhi = (float)(hi + 1), f = (float)((int64_t)2 << bits);
    const int32_t m0 = ((int32_t)1 << bits) + 1, sh = bits + 1;
    for (int64_t i = 0; i < n; ++i) {
        float x = v[i] < flo ? flo : v[i];
        x = x > fhi ? fhi : x;
        x *= f;
        int32_t t = (int32_t)x;
        t -= (float)t > x;
        int32_t q = (t + 2 * s[i] + m0) >> sh;
        q = q < lo ? lo : q;
        codes[i] = (int8_t)(q > hi ? hi : q);
    }
}

#if BG_MADD
/* sr_block_i8 for 16-bit draws from a word boundary (offset % 4 == 0) with AVX2, the draws made in the
 * same pass: four words (mix64_avx2) give the sixteen draws of sixteen elements, then sr_block_i8's
 * operations eight lanes at a time (the clamp of v, the exact scaling by 2**17, floor, + m, >> 17, the
 * clamp of the code), the codes packed to int8 (no saturation: they lie in [lo, hi]). Returns how many
 * elements it did (whole groups of 16). */
__attribute__((target("avx2"))) static int64_t sr16_i8_avx2(const float *v, int64_t n, uint64_t seed,
                                                            uint64_t offset, int32_t lo, int32_t hi,
                                                            int8_t *codes) {
    const __m256 flo = _mm256_set1_ps((float)(lo - 1)), fhi = _mm256_set1_ps((float)(hi + 1));
    const __m256 f = _mm256_set1_ps(131072.0f);
    const __m256i clo = _mm256_set1_epi32(lo), chi = _mm256_set1_epi32(hi), m0 = _mm256_set1_epi32(65537);
    const __m256i step = _mm256_set1_epi64x(4);
    __m256i w0 = _mm256_add_epi64(_mm256_set1_epi64x((long long)((seed << 32) + offset / 4u)),
                                  _mm256_setr_epi64x(0, 1, 2, 3));
    int64_t i = 0;
    for (; i + 16 <= n; i += 16, w0 = _mm256_add_epi64(w0, step)) {
        const __m256i d = mix64_avx2(w0);
        __m256i c[2];
        for (int half = 0; half < 2; ++half) {
            const __m256i s = _mm256_cvtepi16_epi32(half ? _mm256_extracti128_si256(d, 1)
                                                         : _mm256_castsi256_si128(d));
            const __m256 x = _mm256_min_ps(_mm256_max_ps(_mm256_loadu_ps(v + i + 8 * half), flo), fhi);
            const __m256i t = _mm256_cvttps_epi32(_mm256_floor_ps(_mm256_mul_ps(x, f)));
            const __m256i m = _mm256_add_epi32(_mm256_slli_epi32(s, 1), m0);     /* 2 s + 2**16 + 1 */
            const __m256i q = _mm256_srai_epi32(_mm256_add_epi32(t, m), 17);
            c[half] = _mm256_min_epi32(_mm256_max_epi32(q, clo), chi);
        }
        const __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(c[0], c[1]), 0xD8);
        _mm_storeu_si128((__m128i *)(codes + i),
                         _mm_packs_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1)));
    }
    return i;
}
#endif

/* int8 SR codes of one chunk (n <= CHUNK) from draws offset .. of stream `seed`: sr16_i8_avx2 where it
 * applies, then the draws and sr_block_i8 for the rest. */
static void sr_chunk_i8(const float *v, int64_t n, uint64_t seed, uint64_t offset, int bits, int32_t lo,
                        int32_t hi, int8_t *codes, int32_t *buf) {
    int64_t done = 0;
#if BG_MADD
    if (bits == 16 && offset % 4u == 0 && bg_have_avx2())
        done = sr16_i8_avx2(v, n, seed, offset, lo, hi, codes);
#endif
    if (done < n)
        sr_block_i8(v + done, signed_draws(seed, offset + (uint64_t)done, n - done, bits, buf), n - done, bits,
                    lo, hi, codes + done);
}

/* host.quant.core.sr_codes for float32 v: clamp(floor((double)v + (double)u), lo, hi) as int8
 * (code_bytes 1) or int16 (code_bytes 2), u the uniforms of draws offset .. of stream `seed`. The float64
 * sum is correctly rounded as in torch (exact for |v| < 2**35); int8 codes take its integer form
 * (sr_chunk_i8). */
void tetrad_sr_codes_f32(const float *v, int64_t count, uint64_t seed, uint64_t offset, int bits,
                         int32_t lo, int32_t hi, int code_bytes, void *codes) {
    int32_t buf[CHUNK + 32];
    const double dlo = (double)lo, dhi = (double)hi;
    const float scale = 1.0f / (float)((int64_t)1 << bits);
    const float shift = 0.5f + scale * 0.5f;
    for (int64_t base = 0; base < count; base += CHUNK) {
        const int64_t n = count - base < CHUNK ? count - base : CHUNK;
        if (code_bytes == 1)
            sr_chunk_i8(v + base, n, seed, offset + (uint64_t)base, bits, lo, hi, (int8_t *)codes + base, buf);
        else
            sr_block_i16(v + base, signed_draws(seed, offset + (uint64_t)base, n, bits, buf), n, scale, shift,
                         dlo, dhi, (int16_t *)codes + base);
    }
}

/* One block of v = fl(a * m) in float32, m per row (axis 0: mult[row]), per column (axis 1:
 * mult[col]) or one value (axis 2: mult[0]), for the elements base .. base+n-1 of a row-major
 * (rows, cols) matrix. */
static void scaled_block(const float *restrict a, int64_t cols, const float *restrict mult, int axis,
                         int64_t base, int64_t n, float *restrict v) {
    if (axis == 2) {        /* one multiplier: one run, not one per row (short rows cost a loop each) */
        const float m = mult[0];
        for (int64_t t = 0; t < n; ++t)
            v[t] = a[base + t] * m;
        return;
    }
    int64_t r = base / cols, c0 = base % cols;
    for (int64_t i = 0; i < n;) {
        const int64_t len = cols - c0 < n - i ? cols - c0 : n - i;
        const float *restrict ap = a + base + i;
        float *restrict vp = v + i;
        if (axis == 1) {
            const float *restrict mp = mult + c0;
            for (int64_t t = 0; t < len; ++t)
                vp[t] = ap[t] * mp[t];
        } else {
            const float m = mult[r];
            for (int64_t t = 0; t < len; ++t)
                vp[t] = ap[t] * m;
        }
        i += len;
        ++r;
        c0 = 0;
    }
}

/* host.quant.shiftquant's steps 4-5 for float32 a (rows, cols), row-major: v = fl(a * m) (one float32
 * multiply, m as in scaled_block), then tetrad_sr_codes_f32 of v (draws 0 .. of stream `seed`). */
void tetrad_sr_scaled_codes_f32(const float *a, int64_t rows, int64_t cols, const float *mult, int axis,
                                uint64_t seed, int bits, int32_t lo, int32_t hi, int code_bytes,
                                void *codes) {
    int32_t buf[CHUNK + 32];
    float v[CHUNK];
    const int64_t count = rows * cols;
    const double dlo = (double)lo, dhi = (double)hi;
    const float scale = 1.0f / (float)((int64_t)1 << bits);
    const float shift = 0.5f + scale * 0.5f;
    for (int64_t base = 0; base < count; base += CHUNK) {
        const int64_t n = count - base < CHUNK ? count - base : CHUNK;
        scaled_block(a, cols, mult, axis, base, n, v);
        if (code_bytes == 1)
            sr_chunk_i8(v, n, seed, (uint64_t)base, bits, lo, hi, (int8_t *)codes + base, buf);
        else
            sr_block_i16(v, signed_draws(seed, (uint64_t)base, n, bits, buf), n, scale, shift, dlo, dhi,
                         (int16_t *)codes + base);
    }
}

static inline float abs_f32(float v) {
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    b &= 0x7FFFFFFFu;
    memcpy(&v, &b, sizeof v);
    return v;
}

/* host.quant.shiftquant.channel_exponents for float32 maxima r_ch[0..n) (finite, >= 0) with r = their
 * maximum (> 0): e_i = min(E_max, floor(log2(r / r_i))), E_max for r_i = 0. That is the largest
 * e <= E_max with r_i * 2**e <= r (the function's equivalent form): r_i * 2**k is exact in float32
 * (subnormals included) or overflows to Inf, which compares above r as the exact product does, and the
 * condition holds for every k below a k that meets it, so e_i counts the k in 1..E_max that meet it
 * (r_i = 0 meets them all). Integer counts and exact compares: the same integers as the torch code. */
VECTOR_CLONES void tetrad_shift_exponents_f32(const float *restrict r_ch, int64_t n, float r, int e_max,
                                              int8_t *restrict e) {
    float p2[16];
    for (int k = 0; k < 16; ++k)
        p2[k] = (float)(1u << k);
    for (int64_t i = 0; i < n; ++i) {
        const float v = r_ch[i];
        int32_t cnt = 0;
        for (int k = 1; k <= e_max; ++k)
            cnt += v * p2[k] <= r;
        e[i] = (int8_t)cnt;
    }
}

/* out[i] = table[idx[i]] for int8 indices idx[0..n) into a float32 table (ShiftQuant's per-channel
 * multipliers c_e from the channel exponents): float copies, the values of torch's table[idx]. */
void tetrad_lookup_f32(const int8_t *restrict idx, int64_t n, const float *restrict table, float *restrict out) {
    for (int64_t i = 0; i < n; ++i)
        out[i] = table[idx[i]];
}

/* One block of tetrad_luq_codes_f32 without the bookkeeping, so that the loop vectorizes: the codes
 * (threshold elements unsigned) and amb[i] = 1 where the element is a threshold element. */
VECTOR_CLONES __attribute__((noinline)) static void luq_block(
        const float *restrict x, const int32_t *restrict s, int64_t n, float alpha, float scale, float shift,
        int rdn, int8_t *restrict codes, uint8_t *restrict amb) {
    for (int64_t i = 0; i < n; ++i) {
        uint32_t xb;
        memcpy(&xb, &x[i], sizeof xb);
        const uint32_t neg = xb >> 31;                 /* signbit */
        xb &= 0x7FFFFFFFu;
        float y;
        memcpy(&y, &xb, sizeof y);                     /* |x| */
        const float u = rdn ? 0.5f : (float)s[i] * scale + shift;
        y = y / alpha;
        const float z = 0.5f + 0.5f * y;               /* (y + 1) / 2 */
        y = z > y ? z : y;
        int32_t b;
        memcpy(&b, &y, sizeof b);
        b += (int32_t)(u * 8388608.0f);                /* R = u * 2**23, an exact integer */
        const uint8_t mag = (uint8_t)((uint8_t)(b >> 23) - 126u);
        const uint8_t a = (b & 0x7FFFFF) == 0;
        amb[i] = a;
        codes[i] = (int8_t)((neg & (uint32_t)(a ^ 1u)) ? (uint8_t)(0u - mag) : mag);
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
    uint8_t amb[CHUNK];
    const float scale = 1.0f / (float)((int64_t)1 << bits);
    const float shift = 0.5f + scale * 0.5f;
    int64_t n_amb = 0;
    memset(buf, 0, sizeof buf);
    for (int64_t base = 0; base < count; base += CHUNK) {
        const int64_t n = count - base < CHUNK ? count - base : CHUNK;
        const int32_t *s = rdn ? buf : signed_draws(seed, offset + (uint64_t)base, n, bits, buf);
        luq_block(x + base, s, n, alpha, scale, shift, rdn, codes + base, amb);
        for (int64_t i = 0; i < n; i += 8) {
            uint64_t w8 = 0;
            memcpy(&w8, amb + i, (size_t)(n - i < 8 ? n - i : 8));
            if (!w8)
                continue;
            for (int64_t k = i; k < i + 8 && k < n; ++k)
                if (amb[k]) {
                    amb_idx[n_amb] = base + k;
                    amb_u[n_amb] = rdn ? 0.5f : (float)s[k] * scale + shift;
                    ++n_amb;
                }
        }
    }
    return n_amb;
}

/* host.backends.torch_backend.b_values of "log" int8 codes c with |c| <= 7: the int8 values
 * sign(c) * 2**(|c| - 1) (0 for c = 0): entry c + 8 of b_values' table (entry 0, c = -8, is never read
 * here). With AVX2 one byte shuffle looks up 32 codes (the index c + 8 lies in 1 .. 15, so its high bit
 * is clear and the 16-entry table, repeated in both lanes, is what it selects from); torch's
 * index_select of an int8 table is an element-by-element gather, several times slower on a gradient. */
static const int8_t LOG_VALUES[16] = {0, -64, -32, -16, -8, -4, -2, -1, 0, 1, 2, 4, 8, 16, 32, 64};

#if BG_MADD
/* tetrad_log_values_i8's whole 32-code blocks; returns how many codes it did. */
__attribute__((target("avx2"))) static int64_t log_values_avx2(const int8_t *c, int64_t n, int8_t *v) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)LOG_VALUES));
    const __m256i eight = _mm256_set1_epi8(8);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m256i idx = _mm256_add_epi8(_mm256_loadu_si256((const __m256i *)(c + i)), eight);
        _mm256_storeu_si256((__m256i *)(v + i), _mm256_shuffle_epi8(table, idx));
    }
    return i;
}
#endif

void tetrad_log_values_i8(const int8_t *restrict c, int64_t n, int8_t *restrict v) {
    int64_t i = 0;
#if BG_MADD
    if (bg_have_avx2())
        i = log_values_avx2(c, n, v);
#endif
    for (; i < n; ++i)
        v[i] = LOG_VALUES[(c[i] + 8) & 15];
}

/* host.quant.l1norm.L1NormFunction's elementwise passes over a float32 (outer, c, inner) tensor whose
 * channel index is the middle one (NCHW: outer = N, inner = H*W; channels last: outer = N*H*W,
 * inner = 1) with per-channel float32 vectors of c entries. Each output element is the same chain of
 * single IEEE float operations, in the same order, as the torch code's passes (-ffp-contract=off: no
 * fused multiply-add); the reductions between them stay in torch. L1_LOOP runs BODY for every element
 * i with its channel ch: over the channels innermost for channels last (the loop vectorizes across
 * them), over the positions innermost for NCHW. */
#define L1_LOOP(BODY)                                                                                 \
    if (inner == 1) {                                                                                 \
        for (int64_t o = 0; o < outer; ++o)                                                           \
            for (int64_t ch = 0; ch < c; ++ch) {                                                      \
                const int64_t i = o * c + ch;                                                         \
                BODY                                                                                  \
            }                                                                                         \
    } else {                                                                                          \
        for (int64_t o = 0; o < outer; ++o)                                                           \
            for (int64_t ch = 0; ch < c; ++ch)                                                        \
                for (int64_t i = (o * c + ch) * inner, e = i + inner; i < e; ++i) {                  \
                    BODY                                                                              \
                }                                                                                     \
    }

/* |x - mu| (torch: xc = x - mu; xc.abs()). Returns whether x has a NaN or Inf: the input check's
 * finiteness test made in this pass, which reads x anyway (an integer OR, so the loop still vectorizes;
 * a NaN fails the comparison). */
VECTOR_CLONES int32_t tetrad_l1_absdev_f32(const float *restrict x, int64_t outer, int64_t c, int64_t inner,
                                           const float *restrict mu, float *restrict out) {
    int32_t bad = 0;
    L1_LOOP(out[i] = abs_f32(x[i] - mu[ch]); bad |= !(abs_f32(x[i]) <= FLT_MAX);)
    return bad;
}

/* yhat = (x - mu) / sigma; y = yhat * w + b (w, b: NULL for none; y: NULL for none). */
VECTOR_CLONES void tetrad_l1_fwd_f32(const float *restrict x, int64_t outer, int64_t c, int64_t inner,
                                     const float *restrict mu, const float *restrict sigma,
                                     const float *restrict w, const float *restrict b,
                                     float *restrict yhat, float *restrict y) {
    if (w && b) {
        L1_LOOP(const float t = (x[i] - mu[ch]) / sigma[ch]; yhat[i] = t; y[i] = t * w[ch] + b[ch];)
    } else if (w) {
        L1_LOOP(const float t = (x[i] - mu[ch]) / sigma[ch]; yhat[i] = t; y[i] = t * w[ch];)
    } else if (b) {
        L1_LOOP(const float t = (x[i] - mu[ch]) / sigma[ch]; yhat[i] = t; y[i] = t + b[ch];)
    } else {
        L1_LOOP(yhat[i] = (x[i] - mu[ch]) / sigma[ch];)
    }
}

/* The backward's elementwise inputs to its reductions: g = dy * w (w NULL: g is dy, not written),
 * gy = g * yhat, dyy = dy * yhat (NULL: not written), and per channel the sum of sign(yhat) as an exact
 * integer, sgn_sum[0..c) (zeroed here): no sign tensor is written -- its torch sum adds only -1, 0 and +1,
 * whose partial sums are exact integers in float32 in any order while the set has at most 2**24 elements,
 * so the integer is that sum (the caller checks the bound) -- and tetrad_l1_bwd_dx_f32 takes the signs
 * from yhat again. */
VECTOR_CLONES void tetrad_l1_bwd_prep_f32(const float *restrict dy, const float *restrict yhat, int64_t outer,
                                          int64_t c, int64_t inner, const float *restrict w,
                                          float *restrict g, float *restrict gy, int64_t *restrict sgn_sum,
                                          float *restrict dyy) {
    for (int64_t ch = 0; ch < c; ++ch)
        sgn_sum[ch] = 0;
    if (w) {
        L1_LOOP(const float gv = dy[i] * w[ch]; const float yv = yhat[i]; g[i] = gv; gy[i] = gv * yv;
                sgn_sum[ch] += (yv > 0.0f) - (yv < 0.0f); if (dyy) dyy[i] = dy[i] * yv;)
    } else {
        L1_LOOP(const float gv = dy[i]; const float yv = yhat[i]; gy[i] = gv * yv;
                sgn_sum[ch] += (yv > 0.0f) - (yv < 0.0f); if (dyy) dyy[i] = gv * yv;)
    }
}

/* dx = ((g - mg) - km * (sgn - msgn)) / sigma with sgn = sign(yhat) as a float (+0 for +-0: the value
 * torch.sign gives up to the sign of a zero, which no result here depends on: 0 - msgn and -0 - msgn are
 * equal, msgn being a float sum's quotient, never -0). */
VECTOR_CLONES void tetrad_l1_bwd_dx_f32(const float *restrict g, const float *restrict yhat, int64_t outer,
                                        int64_t c, int64_t inner, const float *restrict mg,
                                        const float *restrict msgn, const float *restrict km,
                                        const float *restrict sigma, float *restrict dx) {
    L1_LOOP(const float yv = yhat[i]; const float sv = (float)((yv > 0.0f) - (yv < 0.0f));
            dx[i] = ((g[i] - mg[ch]) - km[ch] * (sv - msgn[ch])) / sigma[ch];)
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
#if BG_MADD
/* wgrad_term_8 with AVX2's vpmaddwd: two positions at a time, a[k] += x[t] g[t][k] + x[t+1] g[t+1][k]
 * as int16 x int16 products summed in pairs into int32 (|x|, |g| <= 128: a pair sum is at most 2**15 in
 * magnitude, exact; vpmaddwd's one overflow, two products -32768 * -32768, cannot occur), then an odd
 * last position alone. The same integer sums as the scalar form, added in another
 * order: exact integers, so the same int32 values. */
__attribute__((target("avx2"), noinline)) static void wgrad_term_8_madd(
        const int8_t *restrict xs, int64_t sw, const int8_t *restrict g, int64_t len, int32_t *restrict a) {
    __m256i acc = _mm256_setzero_si256();
    int64_t t = 0;
    for (; t + 2 <= len; t += 2) {
        const __m128i g0 = _mm_loadl_epi64((const __m128i *)(g + t * 8));
        const __m128i g1 = _mm_loadl_epi64((const __m128i *)(g + t * 8 + 8));
        const __m256i gp = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(g0, g1));     /* g[t][k], g[t+1][k] */
        const uint32_t xp = (uint32_t)(uint16_t)(int16_t)xs[t * sw]
                            | ((uint32_t)(uint16_t)(int16_t)xs[(t + 1) * sw] << 16);
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(gp, _mm256_set1_epi32((int32_t)xp)));
    }
    int32_t s[8];
    _mm256_storeu_si256((__m256i *)s, acc);
    for (; t < len; ++t)
        for (int k = 0; k < 8; ++k)
            s[k] += (int32_t)xs[t * sw] * (int32_t)g[t * 8 + k];
    for (int k = 0; k < 8; ++k)
        a[k] += s[k];
}

/* Every (ci, i, j) term of one output row (b, oh) of tetrad_conv_wgrad_i8 for m = 8, stride 1 along the
 * row, with vpmaddwd as wgrad_term_8_madd, the per-term work cut down: the row's gradient is converted
 * once into the multiply operands (pair q: g[2q][k], g[2q+1][k] as int16) and shared by all c*kh*kw
 * terms, and each input row is copied once into a zero-padded row (the conv's padding) and its
 * neighbouring pairs (x[u], x[u+1]) as int32 words, so that every term runs over all wo positions in whole
 * pairs -- a padded position adds x = 0 -- each one broadcast word and one multiply-add; an odd last
 * position goes alone. The same integer products, summed in int32 as the terms do (one row at most,
 * within the caller's flush bound): exact, the same integers. r0 is the input row of kernel row 0; the
 * caller checks wo <= 2 * WGRAD_ROW_PAIRS and w + 2 * pw <= WGRAD_PAD_MAX. */
#define WGRAD_ROW_PAIRS 128
#define WGRAD_PAD_MAX 512
__attribute__((target("avx2"), noinline)) static void wgrad_row_8_madd(
        const int8_t *restrict xb, const int8_t *restrict grow, int64_t c, int64_t h, int64_t w, int64_t kh,
        int64_t kw, int64_t dh, int64_t dw, int64_t pw, int64_t r0, int64_t wo,
        int32_t *restrict acc) {
    __m256i gp[WGRAD_ROW_PAIRS];
    int16_t xpad[WGRAD_PAD_MAX];
    int32_t xpair[WGRAD_PAD_MAX];
    const int64_t npair = wo / 2, wpad = w + 2 * pw;
    for (int64_t q = 0; q < npair; ++q) {
        const __m128i g0 = _mm_loadl_epi64((const __m128i *)(grow + q * 16));
        const __m128i g1 = _mm_loadl_epi64((const __m128i *)(grow + q * 16 + 8));
        gp[q] = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(g0, g1));
    }
    memset(xpad, 0, sizeof xpad);
    for (int64_t ci = 0; ci < c; ++ci)
        for (int64_t i = 0; i < kh; ++i) {
            const int64_t r = r0 + i * dh;
            if (r < 0 || r >= h)
                continue;
            const int8_t *xr = xb + (ci * h + r) * w;
            for (int64_t u = 0; u < w; ++u)
                xpad[pw + u] = xr[u];
            for (int64_t u = 0; u + 1 < wpad; ++u)
                xpair[u] = (int32_t)((uint32_t)(uint16_t)xpad[u] | ((uint32_t)(uint16_t)xpad[u + 1] << 16));
            for (int64_t j = 0; j < kw; ++j) {
                const int16_t *xs = xpad + j * dw;      /* position ow reads xs[ow] */
                const int32_t *xps = xpair + j * dw;    /* positions 2q, 2q + 1: xps[2q] */
                __m256i s = _mm256_setzero_si256();
                for (int64_t q = 0; q < npair; ++q)
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(gp[q], _mm256_set1_epi32(xps[2 * q])));
                int32_t t[8];
                _mm256_storeu_si256((__m256i *)t, s);
                int32_t *a = acc + ((ci * kh + i) * kw + j) * 8;
                for (int k = 0; k < 8; ++k)
                    a[k] += t[k] + (wo & 1 ? (int32_t)xs[wo - 1] * (int32_t)grow[(wo - 1) * 8 + k] : 0);
            }
        }
}
#endif
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
#if BG_MADD
    const int madd8 = m == 8 && bg_have_avx2();
#endif
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
#if BG_MADD
            if (madd8 && sw == 1 && wo <= 2 * WGRAD_ROW_PAIRS && w + 2 * pw <= WGRAD_PAD_MAX) {
                wgrad_row_8_madd(x + b * c * h * w, grow, c, h, w, kh, kw, dh, dw, pw, oh * sh - ph, wo, acc);
                continue;
            }
#endif
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
#if BG_MADD
                            case 8:
                                if (madd8)
                                    wgrad_term_8_madd(xs, sw, gs, len, a);
                                else
                                    wgrad_term_8(xs, sw, gs, len, m, a);
                                break;
#else
                            case 8: wgrad_term_8(xs, sw, gs, len, m, a); break;
#endif
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

/* host.quant.sawb's codes for float32 x: torch.div(x, step).clamp_(qn, qp).round_().to(int8) in one pass.
 * The division is IEEE (as torch's float32 true division), the clamp the same min/max (x is finite,
 * so the quotient is never NaN), and round half to even of |q| <= 2**22 is (q + 1.5 * 2**23) - 1.5 * 2**23:
 * the sum lies in [2**23, 2**24), where the float spacing is 1, so the add rounds q to an integer, ties to
 * even (1.5 * 2**23 is even), and the subtraction is exact. -ffp-contract=off and no fast-math keep the
 * compiler from folding it. The caller ensures int8 codes (-128 <= qn <= qp <= 127). */
VECTOR_CLONES
void tetrad_sawb_codes_f32(const float *restrict x, int64_t count, float step, float qn, float qp,
                           int8_t *restrict codes) {
    const float magic = 12582912.0f;
    for (int64_t i = 0; i < count; ++i) {
        float q = x[i] / step;
        q = q < qn ? qn : q;
        q = q > qp ? qp : q;
        codes[i] = (int8_t)(int32_t)((q + magic) - magic);
    }
}

/* host.quant.forward.int_symmetric / int_unsigned per tensor for float32 x:
 * round_nearest(x * inv).clamp_(qn, qp).to(int8) in one pass. The multiply is IEEE float32 (torch's);
 * clamping before rounding is the same (the bounds are integers, rounding is monotone and fixes them);
 * the rounding half to even as in tetrad_sawb_codes_f32. The caller ensures -128 <= qn <= qp <= 127. */
VECTOR_CLONES
void tetrad_mulround_codes_f32(const float *restrict x, int64_t count, float inv, float qn, float qp,
                               int8_t *restrict codes) {
    const float magic = 12582912.0f;
    for (int64_t i = 0; i < count; ++i) {
        float q = x[i] * inv;
        q = q < qn ? qn : q;
        q = q > qp ? qp : q;
        codes[i] = (int8_t)(int32_t)((q + magic) - magic);
    }
}

/* ---- the B GEMM of a convolution with its col2im (host.nn.functional.QuantConv2dFunction.backward) ----
 *
 * The torch path: cols = value(G) (N*L, M) @ W_codes (M, C*kh*kw) as an exact integer GEMM, each result
 * converted to float32 and multiplied by the float32 scale s (host.nn.operand.matmul), then folded by
 * col2im in ATen's order: the image is zero-filled and, for c_col = (c, i, j) in increasing order, every
 * column entry that lands on a pixel is added to it. So every pixel is ((0 + v_0) + v_1) + ... over
 * its kernel offsets in (i, j) order with v = fl(fl(int) * s). Here, per sample and per c_col: the
 * integers of that column for every output position (exact: int16 while M * max|w| * max|g| <= 32767,
 * else float32 while the bound is <= 2**24, where every partial sum is an integer the float holds), then
 * the same conversion, multiply and add onto the pixels, c_col by c_col: the same float operations. */

/* Columns cc0 .. cc0 + BG_CB - 1 of one sample: acc[cb * lp + l] = sum_mm w(cc0 + cb, mm) *
 * gt[mm * lp + l] for l < lp (a multiple of the vector width), in registers (GNU vector extensions; the
 * baseline build splits each vector in two SSE2 halves); wb holds w(cc, mm) broadcast to a vector, at
 * wb[(cc0 + cb) * m + mm]. int16 (every partial sum <= 32767 in magnitude, so the wrapping int16
 * arithmetic is exact) or float32 (integers <= 2**24: exact). */
#define BG_CB 8
typedef int16_t bg_vi16 __attribute__((vector_size(32)));
typedef float bg_vf32 __attribute__((vector_size(32)));
#define BGRAD_COLS(NAME, T, V)                                                                        \
    VECTOR_CLONES __attribute__((noinline)) static void NAME(                                        \
            const V *restrict wb, const T *restrict gt, int64_t m, int64_t lp, T *restrict acc) {    \
        const int64_t lanes = (int64_t)(sizeof(V) / sizeof(T));                                       \
        for (int64_t l0 = 0; l0 < lp; l0 += lanes) {                                                  \
            V a[BG_CB];                                                                               \
            for (int cb = 0; cb < BG_CB; ++cb)                                                        \
                a[cb] = (V){0};                                                                       \
            for (int64_t mm = 0; mm < m; ++mm) {                                                      \
                V gv;                                                                                 \
                memcpy(&gv, gt + mm * lp + l0, sizeof gv);                                            \
                for (int cb = 0; cb < BG_CB; ++cb)                                                    \
                    a[cb] = a[cb] + gv * wb[cb * m + mm];                                             \
            }                                                                                         \
            for (int cb = 0; cb < BG_CB; ++cb)                                                        \
                memcpy(acc + cb * lp + l0, &a[cb], sizeof a[cb]);                                     \
        }                                                                                             \
    }
BGRAD_COLS(bgrad_cols_i16, int16_t, bg_vi16)
BGRAD_COLS(bgrad_cols_f32, float, bg_vf32)

/* The same columns with AVX2's vpmaddubsw (32 byte products per instruction, summed in pairs into 16
 * int16 lanes; bgrad_cols_i16 does 16 products per vpmullw): where the weights are in [-8, 7] (offset
 * o = 8) or [-16, 15] (o = 16, 5-bit weights) and the gradient values in [-128, 128]. The unsigned byte
 * operand is w' = w + o in [0, 2o - 1] (wp: per column
 * cc and mm pair p, the 32-byte pattern (w'(cc, 2p), w'(cc, 2p+1)) x 16; a missing odd mm is 0), the
 * signed one the gradient values, interleaved by mm pairs (gp[(p * lp + l) * 2 + (mm & 1)]). A pair sum
 * is at most 2 * 31 * 128 = 7936 in magnitude: vpmaddubsw never saturates, and vpaddw wraps, so every
 * lane is exact modulo 2**16. The accumulators start at init[l] = -o * sum_mm g(mm, l) (removing the
 * +o of w'), and a value +128, stored as the byte -128, is corrected by +256 * w' per occurrence
 * (bgrad_madd_fix). Each column's true sum is at most 32767 in magnitude (the caller's int16 bound), so
 * the int16 result modulo 2**16 is that sum exactly: the same integers as bgrad_cols_i16. */
#if BG_MADD
__attribute__((target("avx2"), noinline)) static void bgrad_cols_madd(
        const uint8_t *restrict wp, const int8_t *restrict gp, const int16_t *restrict init, int64_t mp,
        int64_t lp, int16_t *restrict acc) {
    for (int64_t l0 = 0; l0 < lp; l0 += 16) {
        __m256i a[BG_CB];
        const __m256i i0 = _mm256_loadu_si256((const __m256i *)(init + l0));
        for (int cb = 0; cb < BG_CB; ++cb)
            a[cb] = i0;
        for (int64_t p = 0; p < mp; ++p) {
            const __m256i gv = _mm256_loadu_si256((const __m256i *)(gp + (p * lp + l0) * 2));
            for (int cb = 0; cb < BG_CB; ++cb)
                a[cb] = _mm256_add_epi16(a[cb], _mm256_maddubs_epi16(
                    _mm256_loadu_si256((const __m256i *)(wp + (cb * mp + p) * 32)), gv));
        }
        for (int cb = 0; cb < BG_CB; ++cb)
            _mm256_storeu_si256((__m256i *)(acc + cb * lp + l0), a[cb]);
    }
}

#endif

/* +256 * w'(cc0 + cb, mm) (modulo 2**16) on column cb's entry l for each listed (l, mm) whose value is
 * +128 (see bgrad_cols_madd). */
static void bgrad_madd_fix(const int8_t *restrict w, int64_t ckk, int64_t cc0, int64_t ncb, const int32_t *ent,
                           int64_t nent, int64_t lp, int16_t *restrict acc, int woff) {
    for (int64_t e = 0; e < nent; ++e) {
        const int64_t l = ent[2 * e], mm = ent[2 * e + 1];
        for (int64_t cb = 0; cb < ncb; ++cb) {
            const uint16_t fix = (uint16_t)(256u * (uint32_t)(w[mm * ckk + cc0 + cb] + woff));
            acc[cb * lp + l] = (int16_t)(uint16_t)((uint16_t)acc[cb * lp + l] + fix);
        }
    }
}

/* One sample's values for bgrad_cols_madd: gp (mp * lp * 2 bytes, zero where there is no value), init
 * (lp), and, where check128, the (l, mm) of every +128 in ent (at most max_ent; returns their count, or
 * -1 past it). gp is written as int16 pairs: the even mm in the low byte (x86-64 is little-endian). */
static inline int32_t bg_value(const int8_t *gr, const int8_t *sr, const int16_t *tab, int64_t mm) {
    return sr ? (int32_t)gr[mm] * ((int32_t)1 << sr[mm]) : tab[(uint8_t)gr[mm]];
}

static int64_t bgrad_values_madd(const int8_t *restrict g, const int8_t *restrict gs, int64_t gs_row,
                                 const int16_t *restrict tab, int64_t m, int64_t ho, int64_t wo, int64_t ws,
                                 int64_t lp, int64_t mp, int check128, int8_t *restrict gp,
                                 int16_t *restrict init, int32_t *restrict ent, int64_t max_ent, int woff) {
    uint16_t *restrict gp16 = (uint16_t *)gp;
    memset(gp, 0, (size_t)(mp * lp * 2));
    memset(init, 0, (size_t)lp * sizeof *init);
    int64_t nent = 0;
    for (int64_t oh = 0; oh < ho; ++oh)
        for (int64_t ow = 0; ow < wo; ++ow) {
            const int64_t l = oh * ws + ow;
            const int8_t *gr = g + (oh * wo + ow) * m;
            const int8_t *sr = gs ? gs + (oh * wo + ow) * gs_row : NULL;
            int32_t sum = 0;
            for (int64_t mm = 0; mm < m; mm += 2) {
                const int32_t v0 = bg_value(gr, sr, tab, mm);
                const int32_t v1 = mm + 1 < m ? bg_value(gr, sr, tab, mm + 1) : 0;
                sum += v0 + v1;
                gp16[(mm >> 1) * lp + l] = (uint16_t)((uint32_t)(v0 & 0xFF) | ((uint32_t)(v1 & 0xFF) << 8));
                if (check128 && (v0 == 128 || v1 == 128)) {
                    for (int k = 0; k < 2; ++k)
                        if ((k ? v1 : v0) == 128) {
                            if (nent == max_ent)
                                return -1;
                            ent[2 * nent] = (int32_t)l;
                            ent[2 * nent + 1] = (int32_t)(mm + k);
                            ++nent;
                        }
                }
            }
            init[l] = (int16_t)(uint16_t)((uint32_t)(-woff * sum) & 0xFFFFu);
        }
    return nent;
}

/* Fold columns cc0 .. cc0 + ncb - 1 (acc, (ncb, lp)) of one sample onto its image img in c_col order:
 * img[pixel] = img[pixel] + fl(fl(acc) * s) for every column entry landing on a pixel, row by row. */
#define BGRAD_FOLD(NAME, T)                                                                           \
    VECTOR_CLONES __attribute__((noinline)) static void NAME(                                        \
            const T *restrict acc, int64_t cc0, int64_t ncb, int64_t lp, float *restrict img,        \
            int64_t h, int64_t wd, int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t ph,       \
            int64_t pw, int64_t sh, int64_t sw, int64_t ho, int64_t wo, float s) {                   \
        for (int64_t cb = 0; cb < ncb; ++cb) {                                                        \
            const int64_t cc = cc0 + cb;                                                              \
            const int64_t j = cc % kw, i = (cc / kw) % kh, ci = cc / (kh * kw);                       \
            /* output columns ow whose input column ow*sw - pw + j*dw lies in [0, wd) */              \
            const int64_t off = j * dw - pw;                                                          \
            if (wd - 1 - off < 0)                                                                     \
                continue;                                                                             \
            const int64_t lo = off >= 0 ? 0 : (-off + sw - 1) / sw;                                   \
            const int64_t hi = (wd - 1 - off) / sw < wo - 1 ? (wd - 1 - off) / sw : wo - 1;           \
            if (hi < lo)                                                                              \
                continue;                                                                             \
            const int64_t len = hi - lo + 1;                                                          \
            for (int64_t oh = 0; oh < ho; ++oh) {                                                     \
                const int64_t r = oh * sh - ph + i * dh;                                              \
                if (r < 0 || r >= h)                                                                  \
                    continue;                                                                         \
                float *restrict px = img + (ci * h + r) * wd + lo * sw + off;                         \
                const T *restrict av = acc + cb * lp + oh * wo + lo;                                  \
                if (sw == 1)                                                                          \
                    for (int64_t t = 0; t < len; ++t)                                                 \
                        px[t] = px[t] + (float)av[t] * s;                                             \
                else                                                                                  \
                    for (int64_t t = 0; t < len; ++t)                                                 \
                        px[t * sw] = px[t * sw] + (float)av[t] * s;                                   \
            }                                                                                         \
        }                                                                                             \
    }
BGRAD_FOLD(bgrad_fold_i16, int16_t)
BGRAD_FOLD(bgrad_fold_f32, float)

/* Stride 1: fold columns cc0 .. cc0 + ncb - 1 onto a zero-padded image imgp (c planes of `plane` floats,
 * rows of wp = wo + (kw-1)*dw floats) whose acc rows are laid out with the same row length wp (columns
 * wo .. wp-1 hold 0): then column cc's entry at flat position t lands on padded pixel t + i*dh*wp + j*dw,
 * one contiguous run of ho*wp adds. The entries at positions ow >= wo are 0 and land on padding or, past
 * a row's end, on the next row's first pixels: adding fl(0 * s) = +-0 leaves a pixel unchanged, as a
 * pixel is never -0 (it starts at +0, and a sum is -0 only if both terms are), so every pixel gets
 * exactly the adds of ATen's col2im, in its order. Only for a finite s (else fl(0 * s) is NaN). */
#define BGRAD_FOLD1(NAME, T)                                                                          \
    VECTOR_CLONES __attribute__((noinline)) static void NAME(                                        \
            const T *restrict acc, int64_t cc0, int64_t ncb, int64_t lp, float *restrict imgp,       \
            int64_t plane, int64_t wp, int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t run,  \
            float s) {                                                                                \
        for (int64_t cb = 0; cb < ncb; ++cb) {                                                        \
            const int64_t cc = cc0 + cb;                                                              \
            const int64_t j = cc % kw, i = (cc / kw) % kh, ci = cc / (kh * kw);                       \
            float *restrict px = imgp + ci * plane + i * dh * wp + j * dw;                            \
            const T *restrict av = acc + cb * lp;                                                     \
            for (int64_t t = 0; t < run; ++t)                                                         \
                px[t] = px[t] + (float)av[t] * s;                                                     \
        }                                                                                             \
    }
BGRAD_FOLD1(bgrad_fold1_i16, int16_t)
BGRAD_FOLD1(bgrad_fold1_f32, float)

/* One sample's gradient values, transposed: gt[mm * lp + oh * ws + ow] = tab[g[(oh * wo + ow) * m + mm]]
 * (tab indexed by the code's byte), or code * 2**shift (shift format, gs != NULL); zero elsewhere. */
static void bgrad_values(const int8_t *restrict g, const int8_t *restrict gs, int64_t gs_row,
                         const int16_t *restrict tab, int64_t m, int64_t ho, int64_t wo, int64_t ws, int64_t lp,
                         int16_t *restrict gt) {
    memset(gt, 0, (size_t)(m * lp) * sizeof *gt);
    for (int64_t oh = 0; oh < ho; ++oh)
        for (int64_t ow = 0; ow < wo; ++ow) {
            const int8_t *gr = g + (oh * wo + ow) * m;
            int16_t *gp = gt + oh * ws + ow;
            if (gs) {
                const int8_t *sr = gs + (oh * wo + ow) * gs_row;
                for (int64_t mm = 0; mm < m; ++mm)
                    gp[mm * lp] = (int16_t)((int32_t)gr[mm] * ((int32_t)1 << sr[mm]));
            } else {
                for (int64_t mm = 0; mm < m; ++mm)
                    gp[mm * lp] = tab[(uint8_t)gr[mm]];
            }
        }
}

/* dx (n, c, h, w) float32 = col2im(fl(fl(value(g) @ w) * s)) as above. g: int8 codes (n*ho*wo, m),
 * row-major, in format fmt: 0 int (value = code), 1 LOG (sign(c) * 2**(|c|-1), 0 for c = 0; codes in
 * [-8, 8]), 2 shift (code * 2**shift, gs: the int8 shifts in [0, 15], row r at gs + r * gs_row: gs_row = m
 * for one shift per element in g's layout, 0 for one per column shared by every row), 3 a pair of LOG
 * codes in [-7, 7] (two SMP samples: the sum of their values, tetrad_smp_pack_log2); w: int8 codes
 * (m, c*kh*kw), row-major. nhwc != 0: dx is written channels last, (n, h, w, c) in memory (the same
 * values; stride 1 and a finite s only, else returns 3 and writes nothing).
 * scratch: tetrad_conv_bgrad_scratch(...) floats. Returns 0; or 1 for a code
 * or shift outside those ranges, or a value past int16; or 2 where M * max|w| * max|value(g)| > 2**24
 * (dx is then incomplete: the caller runs the torch code, which rejects or handles those). */
static void bgrad_layout(int64_t c, int64_t h, int64_t wd, int64_t m, int64_t kh, int64_t kw, int64_t ph,
                         int64_t pw, int64_t ho, int64_t wo, int stride1, int64_t *ws, int64_t *lp,
                         int64_t *ckp, int64_t *plane, int64_t *floats) {
    const int64_t wp = wd + 2 * pw, hp = h + 2 * ph;
    *ws = stride1 ? wp : wo;
    *lp = (ho * *ws + 15) / 16 * 16;
    *ckp = (c * kh * kw + BG_CB - 1) / BG_CB * BG_CB;
    *plane = stride1 ? hp * wp + wp : 0;   /* a padded plane, one row of slack for the last run */
    (void)m;
    /* + the vpmaddubsw operands: wp (ckp * mp * 32 bytes), gp (mp * lp * 2 bytes), init (lp int16),
     * ent (2 * (m * lp / 16 + 1) int32) */
    const int64_t mp = (m + 1) / 2;
    *floats = 8 * *ckp * m + 2 * m * *lp + 2 * BG_CB * *lp + c * *plane + 64
              + 8 * *ckp * mp + mp * *lp / 2 + *lp / 2 + 2 * (m * *lp / 16 + 1) + 64;
}

int64_t tetrad_conv_bgrad_scratch(int64_t c, int64_t h, int64_t wd, int64_t m, int64_t kh, int64_t kw,
                                  int64_t ph, int64_t pw, int64_t sh, int64_t sw, int64_t ho, int64_t wo) {
    int64_t ws, lp, ckp, plane, floats;   /* the padded layout (stride 1) needs the most */
    bgrad_layout(c, h, wd, m, kh, kw, ph, pw, ho, wo, sh == 1 && sw == 1, &ws, &lp, &ckp, &plane, &floats);
    return floats;
}

static int smp_pair_table(const int8_t *g, int64_t count, int16_t *tab, int32_t *gmax);
static int bgrad_values_madd_blocks(const int8_t *g, int fmt, int32_t gmax, const int8_t *gs, int64_t m, int64_t ho,
                                    int64_t wo, int64_t ws, int64_t lp, int8_t *gp, int16_t *init, int woff);

int tetrad_conv_bgrad(const int8_t *g, const int8_t *gs, int64_t gs_row, int fmt, const int8_t *w, int64_t n,
                      int64_t c, int64_t h, int64_t wd, int64_t m, int64_t kh, int64_t kw, int64_t dh, int64_t dw,
                      int64_t ph, int64_t pw, int64_t sh, int64_t sw, int64_t ho, int64_t wo, float s,
                      float *scratch, float *dx, int nhwc) {
    const int64_t ckk = c * kh * kw, L = ho * wo, nl = n * L;
    /* the padded fold for stride 1 and a finite s (an infinite s makes fl(0 * s) NaN, not a no-op) */
    const int stride1 = sh == 1 && sw == 1 && s - s == 0.0f;
    if (nhwc && !stride1)   /* the channels-last image is written by the padded fold's copy only */
        return 3;
    int64_t ws, lp, ckp, plane, floats;
    bgrad_layout(c, h, wd, m, kh, kw, ph, pw, ho, wo, stride1, &ws, &lp, &ckp, &plane, &floats);
    /* the code -> value table and the largest value of the tensor (one scan of the codes) */
    int16_t tab[256];
    int32_t gmax = 0, hi_code = 0;
    if (fmt == 2) {
        int32_t cmax = 0, smax = 0, smin = 0;
        for (int64_t k = 0; k < nl * m; ++k) {
            const int32_t a = g[k] < 0 ? -(int32_t)g[k] : g[k];
            cmax = a > cmax ? a : cmax;
        }
        for (int64_t k = 0; k < (gs_row ? nl : 1) * m; ++k) {
            smax = gs[k] > smax ? gs[k] : smax;
            smin = gs[k] < smin ? gs[k] : smin;
        }
        if (smin < 0 || smax > 15 || (cmax << smax) > 32767)
            return 1;
        gmax = cmax << smax;
    } else if (fmt == 3) {
        if (smp_pair_table(g, nl * m, tab, &gmax))
            return 1;
    } else {
        int32_t lo = 0, hi = 0;
        for (int64_t k = 0; k < nl * m; ++k) {
            lo = g[k] < lo ? g[k] : lo;
            hi = g[k] > hi ? g[k] : hi;
        }
        if (fmt == 1 && (lo < -8 || hi > 8))
            return 1;
        for (int v = -128; v < 128; ++v) {
            const int a = v < 0 ? -v : v;
            tab[(uint8_t)(int8_t)v] = (int16_t)(fmt == 0 ? v : (fmt == 1 && a <= 8) ?
                                                (v < 0 ? -1 : 1) * (a ? 1 << (a - 1) : 0) : 0);
        }
        const int32_t a = -lo > hi ? -lo : hi;
        gmax = fmt == 0 ? a : (a ? 1 << (a - 1) : 0);
        hi_code = hi;
    }
    int32_t wmax = 0;
    for (int64_t k = 0; k < m * ckk; ++k) {
        const int32_t a = w[k] < 0 ? -(int32_t)w[k] : w[k];
        wmax = a > wmax ? a : wmax;
    }
    const int64_t bound = m * (int64_t)wmax * (int64_t)gmax;
    if (bound > 16777216)
        return 2;
    const int narrow = bound <= 32767;
    /* scratch regions, one type each: vectors wb (ckp * m), float gtf (m*lp), accf (BG_CB*lp),
     * padded image (c * plane), int16 gt16 (m*lp), acc16 (BG_CB*lp); then the vpmaddubsw operands */
    bg_vi16 *wb16 = (bg_vi16 *)(((uintptr_t)scratch + 31) & ~(uintptr_t)31);
    bg_vf32 *wbf = (bg_vf32 *)wb16;
    float *gtf = (float *)(wb16 + ckp * m), *accf = gtf + m * lp, *imgp = accf + BG_CB * lp;
    int16_t *gt16 = (int16_t *)(imgp + c * plane), *acc16 = gt16 + m * lp;
    const int64_t mp = (m + 1) / 2, max_ent = m * lp / 16;
    uint8_t *wpm = (uint8_t *)(((uintptr_t)(acc16 + BG_CB * lp) + 31) & ~(uintptr_t)31);
    int8_t *gpm = (int8_t *)(wpm + ckp * mp * 32);
    int16_t *initm = (int16_t *)(gpm + mp * lp * 2);
    int32_t *entm = (int32_t *)(((uintptr_t)(initm + lp) + 3) & ~(uintptr_t)3);
    int madd = 0, woff = 8;   /* woff: the weights' offset to unsigned bytes, 8 for [-8, 7], 16 for [-16, 15] */
    /* whether a value can be +128 (LOG code +8; a shift operand with such a code << shift): then listed */
    const int check128 = fmt >= 2 ? gmax >= 128 : (fmt == 1 && tab[8] == 128 && gmax >= 128 && hi_code == 8);
#if BG_MADD
    if (narrow && gmax <= 128 && bg_have_avx2()) {
        int32_t wmin = 0, wmx = 0;
        for (int64_t k = 0; k < m * ckk; ++k) {
            wmin = w[k] < wmin ? w[k] : wmin;
            wmx = w[k] > wmx ? w[k] : wmx;
        }
        /* 5-bit weights (lbt5) take the offset 16: a pair sum is at most 2 * 31 * 128 = 7936, no saturation */
        woff = wmin >= -8 && wmx <= 7 ? 8 : 16;
        madd = wmin >= -16 && wmx <= 15;
    }
    if (madd)
        for (int64_t cc = 0; cc < ckp; ++cc)
            for (int64_t p = 0; p < mp; ++p)
                for (int t = 0; t < 32; ++t) {
                    const int64_t mm = 2 * p + (t & 1);
                    wpm[(cc * mp + p) * 32 + t] = (uint8_t)(cc < ckk && mm < m ? w[mm * ckk + cc] + woff : 0);
                }
#endif
    for (int64_t cc = 0; cc < ckp; ++cc)       /* W transposed to (ckk, m), broadcast; zero past ckk */
        for (int64_t mm = 0; mm < m; ++mm) {
            const int8_t v = cc < ckk ? w[mm * ckk + cc] : 0;
            if (narrow)
                wb16[cc * m + mm] = (bg_vi16){0} + (int16_t)v;
            else
                wbf[cc * m + mm] = (bg_vf32){0} + (float)v;
        }
    if (!stride1)
        memset(dx, 0, (size_t)(n * c * h * wd) * sizeof *dx);
    const int64_t wp = wd + 2 * pw;
    for (int64_t b = 0; b < n; ++b) {
        /* the vpmaddubsw columns where they apply (few +128 values), else the int16/float32 ones */
        const int8_t *gsb = gs ? gs + b * L * gs_row : NULL;
        const int64_t nent = !madd ? -1
            : bgrad_values_madd_blocks(g + b * L * m, fmt, gmax, gsb, m, ho, wo, ws, lp, gpm, initm, woff) ? 0
            : bgrad_values_madd(g + b * L * m, gsb, gs_row, tab, m, ho, wo, ws, lp, mp, check128, gpm, initm, entm,
                                max_ent, woff);
        if (nent < 0)
            bgrad_values(g + b * L * m, gsb, gs_row, tab, m, ho, wo, ws, lp, gt16);
        if (!narrow)
            for (int64_t k = 0; k < m * lp; ++k)
                gtf[k] = (float)gt16[k];
        float *img = dx + b * c * h * wd;
        if (stride1)
            memset(imgp, 0, (size_t)(c * plane) * sizeof *imgp);
        for (int64_t cc0 = 0; cc0 < ckk; cc0 += BG_CB) {
            const int64_t ncb = ckk - cc0 < BG_CB ? ckk - cc0 : BG_CB;
#if BG_MADD
            if (nent >= 0) {
                bgrad_cols_madd(wpm + cc0 * mp * 32, gpm, initm, mp, lp, acc16);
                bgrad_madd_fix(w, ckk, cc0, ncb, entm, nent, lp, acc16, woff);
            } else
#endif
            if (narrow)
                bgrad_cols_i16(wb16 + cc0 * m, gt16, m, lp, acc16);
            else
                bgrad_cols_f32(wbf + cc0 * m, gtf, m, lp, accf);
            if (stride1 && narrow)
                bgrad_fold1_i16(acc16, cc0, ncb, lp, imgp, plane, wp, kh, kw, dh, dw, ho * wp, s);
            else if (stride1)
                bgrad_fold1_f32(accf, cc0, ncb, lp, imgp, plane, wp, kh, kw, dh, dw, ho * wp, s);
            else if (narrow)
                bgrad_fold_i16(acc16, cc0, ncb, lp, img, h, wd, kh, kw, dh, dw, ph, pw, sh, sw, ho, wo, s);
            else
                bgrad_fold_f32(accf, cc0, ncb, lp, img, h, wd, kh, kw, dh, dw, ph, pw, sh, sw, ho, wo, s);
        }
        if (stride1 && nhwc)   /* the interior of the padded image, channels last: img (h, w, c) */
            for (int64_t r = 0; r < h; ++r)
                for (int64_t q = 0; q < wd; ++q) {
                    const float *src = imgp + (r + ph) * wp + pw + q;
                    float *dst = img + (r * wd + q) * c;
                    for (int64_t ci = 0; ci < c; ++ci)
                        dst[ci] = src[ci * plane];
                }
        else if (stride1)   /* the interior of the padded image */
            for (int64_t ci = 0; ci < c; ++ci)
                for (int64_t r = 0; r < h; ++r)
                    memcpy(img + (ci * h + r) * wd, imgp + ci * plane + (r + ph) * wp + pw,
                           (size_t)wd * sizeof *img);
    }
    return 0;
}

/* ==== smp: LUQ SMP, several LOG samples of one gradient (host.quant.luq.luq_smp) ==== */

/* The sum over the samples of b_values' LOG values: out[i] = sum_j v(c[j * n + i]) for `samples`
 * planes of n int8 codes, v(c) = sign(c) * 2**(|c| - 1) (0 for c = 0), as int16 (|sum| <= 128 *
 * samples <= 32767 for samples <= 255). Integer adds: exact in any order. Returns 0, or 1 (out
 * incomplete) for a code outside [-8, 8] or too many samples. With AVX2, codes in [-7, 7] take the
 * byte-shuffle lookup of tetrad_log_values_i8 and widen to int16; any other block the table. */
static const int16_t SMP_LOG_VALUES[17] = {-128, -64, -32, -16, -8, -4, -2, -1, 0, 1, 2, 4, 8, 16, 32, 64, 128};

static int smp_log_sum_scalar(const int8_t *restrict c, int64_t n, int64_t samples, int64_t i0, int64_t i1,
                              int16_t *restrict out) {
    for (int64_t i = i0; i < i1; ++i) {
        int32_t s = 0;
        for (int64_t j = 0; j < samples; ++j) {
            const int32_t k = (int32_t)c[j * n + i] + 8;
            if (k < 0 || k > 16)
                return 1;
            s += SMP_LOG_VALUES[k];
        }
        out[i] = (int16_t)s;
    }
    return 0;
}

#if BG_MADD
/* The whole 16-code blocks of tetrad_smp_log_sum_i16 whose codes all lie in [-7, 7]; a block with any
 * other code is done by the scalar loop. Returns 0, or 1 as tetrad_smp_log_sum_i16. */
__attribute__((target("avx2"))) static int smp_log_sum_avx2(const int8_t *c, int64_t n, int64_t samples,
                                                            int64_t *done, int16_t *out) {
    const __m128i table = _mm_loadu_si128((const __m128i *)LOG_VALUES);
    const __m128i eight = _mm_set1_epi8(8), fifteen = _mm_set1_epi8(15);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i acc = _mm256_setzero_si256();
        int ok = 1;
        for (int64_t j = 0; j < samples; ++j) {
            const __m128i idx = _mm_add_epi8(_mm_loadu_si128((const __m128i *)(c + j * n + i)), eight);
            /* idx must lie in 1 .. 15 (codes -7 .. 7); signed byte compares, and a code >= 120, whose
             * c + 8 wraps to a negative byte, fails them too */
            const __m128i bad = _mm_or_si128(_mm_cmpgt_epi8(_mm_set1_epi8(1), idx), _mm_cmpgt_epi8(idx, fifteen));
            if (_mm_movemask_epi8(bad)) {
                ok = 0;
                break;
            }
            acc = _mm256_add_epi16(acc, _mm256_cvtepi8_epi16(_mm_shuffle_epi8(table, idx)));
        }
        if (ok)
            _mm256_storeu_si256((__m256i *)(out + i), acc);
        else if (smp_log_sum_scalar(c, n, samples, i, i + 16, out))
            return 1;
    }
    *done = i;
    return 0;
}
#endif

int tetrad_smp_log_sum_i16(const int8_t *restrict c, int64_t n, int64_t samples, int16_t *restrict out) {
    if (samples < 1 || samples > 255)
        return 1;
    int64_t i = 0;
#if BG_MADD
    if (bg_have_avx2() && smp_log_sum_avx2(c, n, samples, &i, out))
        return 1;
#endif
    return smp_log_sum_scalar(c, n, samples, i, n, out);
}

/* Two SMP samples' LOG codes c0, c1 in [-7, 7] (max_exp = 6) as one byte, (c0 + 7) * 15 + (c1 + 7) in
 * [0, 224], for tetrad_conv_bgrad's format 3, whose value table gives v(c0) + v(c1) in [-128, 128].
 * out[i] from c[i] and c[n + i]. Returns 0, or 1 for a code outside [-7, 7] (out incomplete). */
int tetrad_smp_pack_log2(const int8_t *restrict c, int64_t n, uint8_t *restrict out) {
    uint8_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
        const uint8_t a = (uint8_t)(c[i] + 7), b = (uint8_t)(c[n + i] + 7);
        bad |= (uint8_t)((a > 14) | (b > 14));
        out[i] = (uint8_t)(a * 15 + b);
    }
    return bad != 0;
}

/* tetrad_conv_bgrad's format 3: tab[p] = v(c0) + v(c1) for the pair byte p of tetrad_smp_pack_log2 (0 for
 * bytes past 224), and gmax = the largest |tab[p]| of the count bytes of g. Returns 1 for a byte past 224. */
static int smp_pair_table(const int8_t *g, int64_t count, int16_t *tab, int32_t *gmax) {
    uint8_t seen[256] = {0};
    for (int64_t k = 0; k < count; ++k)
        seen[(uint8_t)g[k]] = 1;
    int32_t top = 0;
    for (int p = 0; p < 256; ++p) {
        tab[p] = p <= 224 ? (int16_t)(LOG_VALUES[p / 15 + 1] + LOG_VALUES[p % 15 + 1]) : 0;
        if (seen[p] && p > 224)
            return 1;
        const int32_t a = tab[p] < 0 ? -tab[p] : tab[p];
        top = seen[p] && a > top ? a : top;
    }
    *gmax = top;
    return 0;
}

/* luq_block for two SMP samples of the same x: |x| / alpha and its underflow map computed once, then
 * each sample's code from its own draw, with luq_block's arithmetic (codes of sample j at codes_j). */
VECTOR_CLONES __attribute__((noinline)) static void luq2_block(
        const float *restrict x, const int32_t *restrict s0, const int32_t *restrict s1, int64_t n, float alpha,
        float scale, float shift, int8_t *restrict codes0, int8_t *restrict codes1, uint8_t *restrict amb0,
        uint8_t *restrict amb1) {
    for (int64_t i = 0; i < n; ++i) {
        uint32_t xb;
        memcpy(&xb, &x[i], sizeof xb);
        const uint32_t neg = xb >> 31;                 /* signbit */
        xb &= 0x7FFFFFFFu;
        float y;
        memcpy(&y, &xb, sizeof y);                     /* |x| */
        y = y / alpha;
        const float z = 0.5f + 0.5f * y;               /* (y + 1) / 2 */
        y = z > y ? z : y;
        int32_t yb;
        memcpy(&yb, &y, sizeof yb);
        const float u0 = (float)s0[i] * scale + shift, u1 = (float)s1[i] * scale + shift;
        const int32_t b0 = yb + (int32_t)(u0 * 8388608.0f), b1 = yb + (int32_t)(u1 * 8388608.0f);
        const uint8_t mag0 = (uint8_t)((uint8_t)(b0 >> 23) - 126u), mag1 = (uint8_t)((uint8_t)(b1 >> 23) - 126u);
        const uint8_t a0 = (b0 & 0x7FFFFF) == 0, a1 = (b1 & 0x7FFFFF) == 0;
        amb0[i] = a0;
        amb1[i] = a1;
        codes0[i] = (int8_t)((neg & (uint32_t)(a0 ^ 1u)) ? (uint8_t)(0u - mag0) : mag0);
        codes1[i] = (int8_t)((neg & (uint32_t)(a1 ^ 1u)) ? (uint8_t)(0u - mag1) : mag1);
    }
}

/* Lists the threshold elements of one block (amb) as in tetrad_luq_codes_f32: flat index first + k and u. */
static int64_t luq_list_amb(const uint8_t *amb, const int32_t *s, int64_t n, int64_t first, float scale,
                            float shift, int64_t *amb_idx, float *amb_u) {
    int64_t k_out = 0;
    for (int64_t i = 0; i < n; i += 8) {
        uint64_t w8 = 0;
        memcpy(&w8, amb + i, (size_t)(n - i < 8 ? n - i : 8));
        if (!w8)
            continue;
        for (int64_t k = i; k < i + 8 && k < n; ++k)
            if (amb[k]) {
                amb_idx[k_out] = first + k;
                amb_u[k_out] = (float)s[k] * scale + shift;
                ++k_out;
            }
    }
    return k_out;
}

/* tetrad_luq_codes_f32 for SMP's two samples of x in one pass: sample j (codes at codes + j * count) uses
 * draws j * stride + i of stream seed (host.quant.luq.luq_smp's layout). The threshold elements of both
 * samples are listed in amb_idx (flat in the (2, count) codes) and amb_u; returns how many. */
int64_t tetrad_luq_smp2_codes_f32(const float *x, int64_t count, float alpha, uint64_t seed, uint64_t stride,
                                  int bits, int8_t *codes, int64_t *amb_idx, float *amb_u) {
    int32_t buf0[CHUNK + 32], buf1[CHUNK + 32];
    uint8_t amb0[CHUNK], amb1[CHUNK];
    const float scale = 1.0f / (float)((int64_t)1 << bits);
    const float shift = 0.5f + scale * 0.5f;
    int64_t n_amb = 0;
    for (int64_t base = 0; base < count; base += CHUNK) {
        const int64_t n = count - base < CHUNK ? count - base : CHUNK;
        const int32_t *s0 = signed_draws(seed, (uint64_t)base, n, bits, buf0);
        const int32_t *s1 = signed_draws(seed, stride + (uint64_t)base, n, bits, buf1);
        luq2_block(x + base, s0, s1, n, alpha, scale, shift, codes + base, codes + count + base, amb0, amb1);
        n_amb += luq_list_amb(amb0, s0, n, base, scale, shift, amb_idx + n_amb, amb_u + n_amb);
        n_amb += luq_list_amb(amb1, s1, n, count + base, scale, shift, amb_idx + n_amb, amb_u + n_amb);
    }
    return n_amb;
}

/* ==== smp: DSQ's forward pass (lbt4/lbt5, host.quant.forward._DSQSTE) ==== */

/* One DSQ kind's pass over count floats: the normalised t (kind 0 weight: (x / s + 1) * 0.5; 1 signed
 * activation: (x + s) / (s + s); 2 unsigned activation: x / s, each operation rounded as torch's), the
 * mask 0 <= t <= 1, k = round_half_even(clamp(t, 0, 1) * n) (the magic-number rounding of
 * tetrad_sawb_codes_f32: k <= 254 here; torch's clamp and round keep a -0.0, so does this), the code
 * k - qm and out = code * step. Returns 1 where an x is not finite or a t is NaN (the outputs are then
 * not used). */
#define DSQ_FWD(NAME, T_OF_X)                                                                         \
    VECTOR_CLONES __attribute__((noinline)) static int NAME(                                         \
            const float *restrict x, int64_t count, float s, float n, float qm, float step,           \
            float *restrict out, int8_t *restrict codes, uint8_t *restrict mask) {                   \
        const float magic = 12582912.0f, s2 = s + s;                                                  \
        uint32_t bad = 0;                                                                             \
        for (int64_t i = 0; i < count; ++i) {                                                         \
            const float v = x[i];                                                                     \
            float t = T_OF_X;                                                                         \
            uint32_t vb, tb;                                                                          \
            memcpy(&vb, &v, sizeof vb);                                                               \
            memcpy(&tb, &t, sizeof tb);                                                               \
            /* x not finite (exponent all ones) or t NaN */                                           \
            bad |= (uint32_t)((vb & 0x7F800000u) == 0x7F800000u)                                      \
                   | (uint32_t)((tb & 0x7FFFFFFFu) > 0x7F800000u);                                    \
            const uint32_t ge0 = t >= 0.0f, le1 = t <= 1.0f;                                          \
            mask[i] = (uint8_t)(ge0 & le1);                                                           \
            /* clamp(t, 0, 1) as bit selects (t < 0: +0.0; t > 1: 1.0; a -0.0 stays), which GCC     \
             * vectorizes where it does not if-convert the float selects */                         \
            tb = (tb & (0u - ge0) & (0u - le1)) | (0x3F800000u & (le1 - 1u));                         \
            memcpy(&t, &tb, sizeof t);                                                                \
            const float q = t * n;                                                                    \
            float r = (q + magic) - magic;                                                            \
            /* q >= +0 or q = -0.0 (torch's clamp and round keep it): q's sign bit onto r */          \
            uint32_t qb, rb;                                                                          \
            memcpy(&qb, &q, sizeof qb);                                                               \
            memcpy(&rb, &r, sizeof rb);                                                               \
            rb |= qb & 0x80000000u;                                                                   \
            memcpy(&r, &rb, sizeof r);                                                                \
            const float code = r - qm;                                                                \
            codes[i] = (int8_t)(int32_t)code;                                                         \
            out[i] = code * step;                                                                     \
        }                                                                                             \
        (void)s2;                                                                                     \
        return bad != 0;                                                                              \
    }
DSQ_FWD(dsq_fwd_weight, (v / s + 1.0f) * 0.5f)
DSQ_FWD(dsq_fwd_signed, (v + s) / s2)
DSQ_FWD(dsq_fwd_act, v / s)

int tetrad_dsq_fwd_f32(const float *x, int64_t count, float s, int kind, float n, float qm, float step,
                       float *out, int8_t *codes, uint8_t *mask) {
    if (kind == 0)
        return dsq_fwd_weight(x, count, s, n, qm, step, out, codes, mask);
    if (kind == 1)
        return dsq_fwd_signed(x, count, s, n, qm, step, out, codes, mask);
    return dsq_fwd_act(x, count, s, n, qm, step, out, codes, mask);
}

/* DSQ's backward products (host.quant.forward._DSQSTE.backward) in one pass: for g, the incoming
 * gradient, in memory as (rows, c, hw), and mask, codes and x of the forward pass either in the same
 * order (cl = 0) or with the last two swapped (cl = 1: element (r, ch, s) at (r * hw + s) * c + ch: a
 * channels-last x of an NCHW g, or a row-major (hw, c) x of a g stored as its transpose), every product
 * in g's order as torch's g * mask, g * codes and (g * mask) * x give them (g's layout decides theirs):
 * gm = g * mask, p1 = g * code, p2 = gm * x; gm is written to gx in g's layout (gx_cl = 0) or in x's
 * (gx_cl = 1, the STE's grad_like_x). torch then sums p1 and p2 as the torch code does. */
VECTOR_CLONES __attribute__((noinline)) static void dsq_bwd_row(
        const float *restrict g, const uint8_t *restrict mask, const int8_t *restrict codes,
        const float *restrict x, int64_t len, int64_t step, float *restrict gx, int64_t gx_step,
        float *restrict p1, float *restrict p2) {
    for (int64_t t = 0; t < len; ++t) {
        const float gv = g[t], gm = gv * (float)mask[t * step];
        p1[t] = gv * (float)codes[t * step];
        p2[t] = gm * x[t * step];
        gx[t * gx_step] = gm;
    }
}

#if BG_MADD
/* Eight float rows of eight, transposed in registers (unpack, shuffle, 128-bit lane swap). */
__attribute__((target("avx2"))) static inline void dsq_tr8(__m256 *r) {
    __m256 t[8], u[8];
    for (int k = 0; k < 4; ++k) {
        t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 2; ++k) {
        u[4 * k] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * k + 1] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * k + 2] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * k + 3] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int k = 0; k < 4; ++k) {
        r[k] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
        r[k + 4] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
    }
}

/* tetrad_dsq_bwd_f32's cl = 1 products on the whole 8 x 8 tiles (channels ch < c8, positions s < hw8, both
 * multiples of 8): x, mask and codes read as rows of x's order and transposed to g's, the same IEEE
 * products as dsq_bwd_row (no FMA), gm transposed back for gx_cl. */
__attribute__((target("avx2"))) static void dsq_bwd_tiles_avx2(
        const float *g, const uint8_t *mask, const int8_t *codes, const float *x, int64_t rows, int64_t c,
        int64_t hw, int64_t c8, int64_t hw8, int gx_cl, float *gx, float *p1, float *p2) {
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t ch0 = 0; ch0 < c8; ch0 += 8)
            for (int64_t s0 = 0; s0 < hw8; s0 += 8) {
                __m256 xv[8], mv[8], cv[8];
                const int64_t xb = (r * hw + s0) * c + ch0;            /* x's row s0, column ch0 */
                for (int j = 0; j < 8; ++j) {
                    const int64_t q = xb + j * c;
                    xv[j] = _mm256_loadu_ps(x + q);
                    mv[j] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(mask + q))));
                    cv[j] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(codes + q))));
                }
                dsq_tr8(xv);
                dsq_tr8(mv);
                dsq_tr8(cv);
                __m256 gmv[8];
                for (int i = 0; i < 8; ++i) {                            /* g's row ch0 + i, columns s0.. */
                    const int64_t o = (r * c + ch0 + i) * hw + s0;
                    const __m256 gv = _mm256_loadu_ps(g + o);
                    gmv[i] = _mm256_mul_ps(gv, mv[i]);
                    _mm256_storeu_ps(p1 + o, _mm256_mul_ps(gv, cv[i]));
                    _mm256_storeu_ps(p2 + o, _mm256_mul_ps(gmv[i], xv[i]));
                    if (!gx_cl)
                        _mm256_storeu_ps(gx + o, gmv[i]);
                }
                if (gx_cl) {
                    dsq_tr8(gmv);
                    for (int j = 0; j < 8; ++j)
                        _mm256_storeu_ps(gx + xb + j * c, gmv[j]);
                }
            }
}
#endif

void tetrad_dsq_bwd_f32(const float *g, const uint8_t *mask, const int8_t *codes, const float *x, int64_t rows,
                        int64_t c, int64_t hw, int cl, int gx_cl, float *gx, float *p1, float *p2) {
    int64_t c8 = 0, hw8 = 0;   /* the tiles [0, c8) x [0, hw8) done by the AVX2 transposes */
#if BG_MADD
    if (cl && bg_have_avx2()) {
        c8 = c / 8 * 8;
        hw8 = hw / 8 * 8;
        dsq_bwd_tiles_avx2(g, mask, codes, x, rows, c, hw, c8, hw8, gx_cl, gx, p1, p2);
    }
#endif
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t ch = 0; ch < c; ++ch) {
            const int64_t s0 = ch < c8 ? hw8 : 0;                     /* the rest of the row */
            const int64_t o = (r * c + ch) * hw + s0;                  /* g's (contiguous) offset */
            const int64_t xs = cl ? c : 1, xo = (cl ? r * hw * c + ch : o - s0) + s0 * xs;
            const int64_t gs = gx_cl ? c : 1, go = (gx_cl ? r * hw * c + ch : o - s0) + s0 * gs;
            dsq_bwd_row(g + o, mask + xo, codes + xo, x + xo, hw - s0, xs, gx + go, gs, p1 + o, p2 + o);
        }
}

/* ==== smp: LBT's clipped count (host.quant.lbt._count_above) ==== */

/* #{|x[i]| > c}: the integer torch's count_nonzero(x.abs() > c) gives for float32 x (c rounded to float32
 * by the caller, as torch converts the scalar). |x| by clearing the sign bit, as torch's abs. */
VECTOR_CLONES int64_t tetrad_count_abs_above_f32(const float *restrict x, int64_t n, float c) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i) {
        uint32_t b;
        memcpy(&b, &x[i], sizeof b);
        b &= 0x7FFFFFFFu;
        float a;
        memcpy(&a, &b, sizeof a);
        count += a > c;
    }
    return count;
}

/* ==== sq: L1 normalization (channels-last AVX2 passes, per-channel scalars); ShiftQuant (operand values,
 * channel maxima with the finiteness test, the scaled SR's multiply); the input check's range ==== */
/* Three of the L1 norm's elementwise passes (tetrad_l1_absdev_f32, tetrad_l1_fwd_f32, tetrad_l1_bwd_dx_f32)
 * for a channels-last tensor, i.e. `rows` rows of c channels, c a multiple of 8, written with AVX2
 * intrinsics eight channels at a time: the generic loops run the channel loop innermost with a run-time
 * trip count of 8-32, and their per-row vector prologue and epilogue cost more than the arithmetic. Each
 * lane performs the same single IEEE operations in the same order as the generic kernels (separate
 * multiply and add intrinsics: no FMA), so every float is the same. Each returns -1, having done
 * nothing, where it does not apply (no AVX2, or c not a multiple of 8): then the generic kernel runs.
 * (tetrad_l1_bwd_prep_f32 gains nothing this way: its three stores bound it.) */
#if BG_MADD
static int sq_l1_c_ok(int64_t c) {
    return c > 0 && c % 8 == 0 && bg_have_avx2();
}

/* |x - mu| and whether x has a NaN or Inf (see tetrad_l1_absdev_f32). */
__attribute__((target("avx2"))) static int32_t sq_l1_absdev_cl(const float *restrict x, int64_t rows,
                                                              int64_t c, const float *restrict mu,
                                                              float *restrict out) {
    const __m256 sign = _mm256_set1_ps(-0.0f), fmax = _mm256_set1_ps(FLT_MAX);
    __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    for (int64_t o = 0; o < rows; ++o)
        for (int64_t ch = 0; ch < c; ch += 8) {
            const int64_t i = o * c + ch;
            const __m256 xv = _mm256_loadu_ps(x + i);
            _mm256_storeu_ps(out + i, _mm256_andnot_ps(sign, _mm256_sub_ps(xv, _mm256_loadu_ps(mu + ch))));
            ok = _mm256_and_ps(ok, _mm256_cmp_ps(_mm256_andnot_ps(sign, xv), fmax, _CMP_LE_OQ));
        }
    return _mm256_movemask_ps(ok) != 0xFF;
}

/* yhat = (x - mu) / sigma; y = yhat * w + b (see tetrad_l1_fwd_f32). */
__attribute__((target("avx2"))) static void sq_l1_fwd_cl(const float *restrict x, int64_t rows, int64_t c,
                                                        const float *restrict mu, const float *restrict sigma,
                                                        const float *restrict w, const float *restrict b,
                                                        float *restrict yhat, float *restrict y) {
    for (int64_t o = 0; o < rows; ++o)
        for (int64_t ch = 0; ch < c; ch += 8) {
            const int64_t i = o * c + ch;
            const __m256 t = _mm256_div_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(mu + ch)),
                                           _mm256_loadu_ps(sigma + ch));
            _mm256_storeu_ps(yhat + i, t);
            if (y) {
                __m256 v = w ? _mm256_mul_ps(t, _mm256_loadu_ps(w + ch)) : t;
                if (b)
                    v = _mm256_add_ps(v, _mm256_loadu_ps(b + ch));
                _mm256_storeu_ps(y + i, v);
            }
        }
}

/* dx = ((g - mg) - km * (sgn - msgn)) / sigma, sgn = sign(yhat) as +1, -1 or +0 (see tetrad_l1_bwd_dx_f32). */
__attribute__((target("avx2"))) static void sq_l1_bwd_dx_cl(const float *restrict g, const float *restrict yhat,
                                                           int64_t rows, int64_t c, const float *restrict mg,
                                                           const float *restrict msgn, const float *restrict km,
                                                           const float *restrict sigma, float *restrict dx) {
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    for (int64_t o = 0; o < rows; ++o)
        for (int64_t ch = 0; ch < c; ch += 8) {
            const int64_t i = o * c + ch;
            const __m256 yv = _mm256_loadu_ps(yhat + i);
            const __m256 sv = _mm256_sub_ps(_mm256_and_ps(_mm256_cmp_ps(yv, zero, _CMP_GT_OQ), one),
                                            _mm256_and_ps(_mm256_cmp_ps(yv, zero, _CMP_LT_OQ), one));
            const __m256 a = _mm256_sub_ps(_mm256_loadu_ps(g + i), _mm256_loadu_ps(mg + ch));
            const __m256 t = _mm256_mul_ps(_mm256_loadu_ps(km + ch), _mm256_sub_ps(sv, _mm256_loadu_ps(msgn + ch)));
            _mm256_storeu_ps(dx + i, _mm256_div_ps(_mm256_sub_ps(a, t), _mm256_loadu_ps(sigma + ch)));
        }
}
#endif

int32_t tetrad_sq_l1_absdev_cl(const float *x, int64_t rows, int64_t c, const float *mu, float *out) {
#if BG_MADD
    if (sq_l1_c_ok(c))
        return sq_l1_absdev_cl(x, rows, c, mu, out);
#endif
    (void)x, (void)rows, (void)mu, (void)out;
    return -1;
}

int32_t tetrad_sq_l1_fwd_cl(const float *x, int64_t rows, int64_t c, const float *mu, const float *sigma,
                            const float *w, const float *b, float *yhat, float *y) {
#if BG_MADD
    if (sq_l1_c_ok(c)) {
        sq_l1_fwd_cl(x, rows, c, mu, sigma, w, b, yhat, y);
        return 0;
    }
#endif
    (void)x, (void)rows, (void)mu, (void)sigma, (void)w, (void)b, (void)yhat, (void)y;
    return -1;
}

int32_t tetrad_sq_l1_bwd_dx_cl(const float *g, const float *yhat, int64_t rows, int64_t c, const float *mg,
                               const float *msgn, const float *km, const float *sigma, float *dx) {
#if BG_MADD
    if (sq_l1_c_ok(c)) {
        sq_l1_bwd_dx_cl(g, yhat, rows, c, mg, msgn, km, sigma, dx);
        return 0;
    }
#endif
    (void)g, (void)yhat, (void)rows, (void)mg, (void)msgn, (void)km, (void)sigma, (void)dx;
    return -1;
}
/* The forward's per-channel divisor from s1 = mean|x - mu| (torch: sigma = s1.mul_(kappa); scale =
 * sigma.clone(); sigma.add_(eps)): scale = s1 * kappa and sigma = scale + eps, single float32 operations
 * with kappa and eps the float32 values torch casts the Python floats to. */
void tetrad_sq_l1_sigma_f32(const float *restrict s1, int64_t c, float kappa, float eps, float *restrict scale,
                            float *restrict sigma) {
    for (int64_t ch = 0; ch < c; ++ch) {
        const float v = s1[ch] * kappa;
        scale[ch] = v;
        sigma[ch] = v + eps;
    }
}

/* The backward's per-channel scalars (torch: msgn = sgn_sum.to(float32).div_(n); km = kappa * mgy): the
 * exact integer sign sum converted to float32 (exact: |sgn_sum| <= n <= 2**24, the caller's bound) and
 * divided by n (a float32 value, exact), and mgy times the float32 kappa. */
void tetrad_sq_l1_bwd_stats_f32(const int64_t *restrict sgn_sum, int64_t c, float n, const float *restrict mgy,
                                float kappa, float *restrict msgn, float *restrict km) {
    for (int64_t ch = 0; ch < c; ++ch) {
        msgn[ch] = (float)sgn_sum[ch] / n;
        km[ch] = kappa * mgy[ch];
    }
}
/* A ShiftQuant B operand with one shift per column, as the float32 values of a weight-gradient
 * convolution (host.gemm.qconv2d_weight; torch: b_values(codes, "shift", shift).to(float32)): out[r][c] =
 * codes[r][c] << shift[c], computed in int32 (|code| <= 128, shift <= 15: at most 2**22, so the integer
 * and its float32 conversion are exact), in one pass instead of a broadcast shift and a conversion.
 * Returns max |out| (an integer), or -1, having written nothing, if a shift lies outside [0, 15]. */
VECTOR_CLONES int64_t tetrad_sq_shift_values_f32(const int8_t *restrict codes, int64_t rows, int64_t cols,
                                                const int8_t *restrict shift, float *restrict out) {
    for (int64_t c = 0; c < cols; ++c)
        if (shift[c] < 0 || shift[c] > 15)
            return -1;
    int32_t vmax = 0;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
            const int32_t v = (int32_t)codes[r * cols + c] * ((int32_t)1 << shift[c]);
            const int32_t a = v < 0 ? -v : v;
            vmax = a > vmax ? a : vmax;
            out[r * cols + c] = (float)v;
        }
    return vmax;
}
/* host.quant.shiftquant's channel maxima for float32 a (rows, cols), row-major: a.abs().amax(dim=1)
 * (axis 0: one per row) or a.abs().amax(dim=0) (axis 1: one per column), with the input check's
 * finiteness test in the same pass: returns whether a has a NaN or Inf (then out is not meaningful). |a|
 * clears the sign bit (as torch's abs: -0.0 -> +0.0), and the maximum of finite non-negative floats is one
 * of them whatever the order of comparison, so the partial maxima here give the same float as ATen's
 * reduction. */
#if BG_MADD
/* Per-column maxima of rows x (8 * NB) floats with the accumulators in NB registers (NB a constant in each
 * copy); ok keeps the lanes' finiteness tests. */
#define SQ_COLMAX(NAME, NB)                                                                              \
    __attribute__((target("avx2"))) static __m256 NAME(const float *restrict a, int64_t rows,           \
                                                      float *restrict out) {                            \
        const __m256 mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));                         \
        const __m256 fmax = _mm256_set1_ps(FLT_MAX);                                                    \
        __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1)), m[NB];                                  \
        for (int k = 0; k < NB; ++k)                                                                    \
            m[k] = _mm256_setzero_ps();                                                                 \
        for (int64_t i = 0; i < rows; ++i)                                                              \
            for (int k = 0; k < NB; ++k) {                                                              \
                const __m256 v = _mm256_and_ps(_mm256_loadu_ps(a + i * (8 * NB) + 8 * k), mask);        \
                ok = _mm256_and_ps(ok, _mm256_cmp_ps(v, fmax, _CMP_LE_OQ));                             \
                m[k] = _mm256_max_ps(m[k], v);                                                          \
            }                                                                                           \
        for (int k = 0; k < NB; ++k)                                                                    \
            _mm256_storeu_ps(out + 8 * k, m[k]);                                                        \
        return ok;                                                                                      \
    }
SQ_COLMAX(sq_colmax_8, 1)
SQ_COLMAX(sq_colmax_16, 2)
SQ_COLMAX(sq_colmax_32, 4)
SQ_COLMAX(sq_colmax_64, 8)

/* sq_absmax_finite with AVX2: eight columns at a time (axis 1: the common channel counts with register
 * accumulators, others through out; axis 0: eight lanes folded per row), the finiteness test on the same
 * loads. */
__attribute__((target("avx2"))) static int32_t sq_absmax_finite_avx2(const float *restrict a, int64_t rows,
                                                                    int64_t cols, int axis, float *restrict out) {
    const __m256 mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)), fmax = _mm256_set1_ps(FLT_MAX);
    __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    int32_t bad = 0;
    if (axis == 1 && (cols == 8 || cols == 16 || cols == 32 || cols == 64)) {
        ok = cols == 8 ? sq_colmax_8(a, rows, out) : cols == 16 ? sq_colmax_16(a, rows, out)
             : cols == 32 ? sq_colmax_32(a, rows, out) : sq_colmax_64(a, rows, out);
        return _mm256_movemask_ps(ok) != 0xFF;
    }
    if (axis == 1) {
        for (int64_t j = 0; j < cols; ++j)
            out[j] = 0.0f;
        for (int64_t i = 0; i < rows; ++i) {
            const float *restrict ar = a + i * cols;
            int64_t j = 0;
            for (; j + 8 <= cols; j += 8) {
                const __m256 v = _mm256_and_ps(_mm256_loadu_ps(ar + j), mask);
                ok = _mm256_and_ps(ok, _mm256_cmp_ps(v, fmax, _CMP_LE_OQ));
                _mm256_storeu_ps(out + j, _mm256_max_ps(_mm256_loadu_ps(out + j), v));
            }
            for (; j < cols; ++j) {
                const float v = abs_f32(ar[j]);
                bad |= !(v <= FLT_MAX);
                out[j] = v > out[j] ? v : out[j];
            }
        }
        return bad | (_mm256_movemask_ps(ok) != 0xFF);
    }
    for (int64_t i = 0; i < rows; ++i) {
        const float *restrict ar = a + i * cols;
        __m256 m8 = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 8 <= cols; j += 8) {
            const __m256 v = _mm256_and_ps(_mm256_loadu_ps(ar + j), mask);
            ok = _mm256_and_ps(ok, _mm256_cmp_ps(v, fmax, _CMP_LE_OQ));
            m8 = _mm256_max_ps(m8, v);
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
        float m = _mm_cvtss_f32(h);
        for (; j < cols; ++j) {
            const float v = abs_f32(ar[j]);
            bad |= !(v <= FLT_MAX);
            m = v > m ? v : m;
        }
        out[i] = m;
    }
    return bad | (_mm256_movemask_ps(ok) != 0xFF);
}
#endif

static int32_t sq_absmax_finite(const float *restrict a, int64_t rows, int64_t cols, int axis,
                                float *restrict out) {
#if BG_MADD
    if (bg_have_avx2())
        return sq_absmax_finite_avx2(a, rows, cols, axis, out);
#endif
    int32_t bad = 0;
    if (axis == 1)
        for (int64_t j = 0; j < cols; ++j)
            out[j] = 0.0f;
    for (int64_t i = 0; i < rows; ++i) {
        const float *restrict ar = a + i * cols;
        float m = 0.0f;
        for (int64_t j = 0; j < cols; ++j) {
            const float v = abs_f32(ar[j]);
            bad |= !(v <= FLT_MAX);
            if (axis == 1)
                out[j] = v > out[j] ? v : out[j];
            else
                m = v > m ? v : m;
        }
        if (axis == 0)
            out[i] = m;
    }
    return bad;
}

/* ShiftQuant's steps 1-2 in one call (its per-call cost, not the passes, dominates on small gradients),
 * with the input's NaN/Inf test in its pass over a (sq_absmax_finite), so that the caller needs no reduction
 * of its own: the channel maxima r_ch (`axis` as there), r = max_i r_ch[i] (the same float as torch's max:
 * a maximum of non-negative floats, +0 for an all-zero tensor) and the exponents e
 * (tetrad_shift_exponents_f32; every channel e_max when r = 0). Returns r, or -1 where a has a NaN or Inf
 * (then r_ch and e are not meaningful; the caller raises the input check's error). */
float tetrad_sq_shift_channels_f32(const float *restrict a, int64_t rows, int64_t cols, int axis, int e_max,
                                   float *restrict r_ch, int8_t *restrict e) {
    const int64_t n = axis == 0 ? rows : cols;
    if (sq_absmax_finite(a, rows, cols, axis, r_ch))
        return -1.0f;
    float r = 0.0f;
    for (int64_t i = 0; i < n; ++i)
        r = r_ch[i] > r ? r_ch[i] : r;
    if (r != 0.0f) {
        tetrad_shift_exponents_f32(r_ch, n, r, e_max, e);
    } else {
        for (int64_t i = 0; i < n; ++i)
            e[i] = (int8_t)e_max;
    }
    return r;
}
/* The input check's range of a float32 tensor (host.quant.core.check_input_range, callers that never look
 * at the sign of a zero extreme): out[0] = min, out[1] = max over x[0..n), n >= 1, in one pass (torch's
 * aminmax makes about three times the work of one). Min and max of floats are the same in any order
 * but for which zero an extreme of +-0 is. Returns whether x has a NaN (then out is not meaningful: the
 * caller's torch code reports it); an Inf is an extreme, as in aminmax. */
#if BG_MADD
__attribute__((target("avx2"))) static int32_t sq_minmax_avx2(const float *restrict x, int64_t n,
                                                             float *restrict out) {
    /* four independent accumulator chains (the min/max latency, not the loads, bounds one chain) */
    __m256 mn[4], mx[4], nan = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k)
        mn[k] = mx[k] = _mm256_set1_ps(x[0]);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; ++k) {
            const __m256 v = _mm256_loadu_ps(x + i + 8 * k);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            mn[k] = _mm256_min_ps(mn[k], v);
            mx[k] = _mm256_max_ps(mx[k], v);
        }
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        mn[0] = _mm256_min_ps(mn[0], v);
        mx[0] = _mm256_max_ps(mx[0], v);
    }
    for (int k = 1; k < 4; ++k) {
        mn[0] = _mm256_min_ps(mn[0], mn[k]);
        mx[0] = _mm256_max_ps(mx[0], mx[k]);
    }
    float lo[8], hi[8];
    _mm256_storeu_ps(lo, mn[0]);
    _mm256_storeu_ps(hi, mx[0]);
    int32_t bad = _mm256_movemask_ps(nan) != 0;
    float a = lo[0], b = hi[0];
    for (int k = 1; k < 8; ++k) {
        a = lo[k] < a ? lo[k] : a;
        b = hi[k] > b ? hi[k] : b;
    }
    for (; i < n; ++i) {
        const float v = x[i];
        bad |= v != v;
        a = v < a ? v : a;
        b = v > b ? v : b;
    }
    out[0] = a;
    out[1] = b;
    return bad;
}
#endif

int32_t tetrad_sq_minmax_f32(const float *restrict x, int64_t n, float *restrict out) {
#if BG_MADD
    if (bg_have_avx2())
        return sq_minmax_avx2(x, n, out);
#endif
    int32_t bad = 0;
    float a = x[0], b = x[0];
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i];
        bad |= v != v;
        a = v < a ? v : a;
        b = v > b ? v : b;
    }
    out[0] = a;
    out[1] = b;
    return bad;
}
/* ShiftQuant's steps 4-5 (tetrad_sr_scaled_codes_f32: v = fl(a * m), then its SR codes), with the multiply
 * pass in AVX2 where the channels make whole vectors -- cols a multiple of 8 that divides CHUNK, so that
 * every block starts at a row -- instead of scaled_block's baseline loop of one short run per row: the
 * row's multiplier broadcast (axis 0) or the columns' eight (axis 1), the same float32 products, and the
 * same SR of them (sr_chunk_i8 / sr_block_i16 as there). */
#if BG_MADD
__attribute__((target("avx2"))) static void sq_scaled_block_avx2(const float *restrict a, int64_t cols,
                                                                const float *restrict mult, int axis,
                                                                int64_t base, int64_t n, float *restrict v) {
    const float *restrict ap = a + base;
    if (axis == 0) {
        for (int64_t i = 0, r = base / cols; i < n; i += cols, ++r) {
            const __m256 m = _mm256_set1_ps(mult[r]);
            for (int64_t c = 0; c < cols; c += 8)
                _mm256_storeu_ps(v + i + c, _mm256_mul_ps(_mm256_loadu_ps(ap + i + c), m));
        }
    } else {
        for (int64_t i = 0; i < n; i += cols)
            for (int64_t c = 0; c < cols; c += 8)
                _mm256_storeu_ps(v + i + c, _mm256_mul_ps(_mm256_loadu_ps(ap + i + c), _mm256_loadu_ps(mult + c)));
    }
}
#endif

void tetrad_sq_sr_scaled_codes_f32(const float *a, int64_t rows, int64_t cols, const float *mult, int axis,
                                   uint64_t seed, int bits, int32_t lo, int32_t hi, int code_bytes,
                                   void *codes) {
    int32_t buf[CHUNK + 32];
    float v[CHUNK];
    const int64_t count = rows * cols;
    const double dlo = (double)lo, dhi = (double)hi;
    const float scale = 1.0f / (float)((int64_t)1 << bits);
    const float shift = 0.5f + scale * 0.5f;
#if BG_MADD
    const int vec = axis != 2 && cols % 8 == 0 && CHUNK % cols == 0 && bg_have_avx2();
#endif
    for (int64_t base = 0; base < count; base += CHUNK) {
        const int64_t n = count - base < CHUNK ? count - base : CHUNK;
#if BG_MADD
        if (vec)
            sq_scaled_block_avx2(a, cols, mult, axis, base, n, v);
        else
#endif
            scaled_block(a, cols, mult, axis, base, n, v);
        if (code_bytes == 1)
            sr_chunk_i8(v, n, seed, (uint64_t)base, bits, lo, hi, (int8_t *)codes + base, buf);
        else
            sr_block_i16(v, signed_draws(seed, (uint64_t)base, n, bits, buf), n, scale, shift, dlo, dhi,
                         (int16_t *)codes + base);
    }
}
/* ==== sq: end ==== */

/* ==== stat: StatQuant (psq4, bhq5) kernels ==== */

/* host.gemm.qconv2d_weight for StatQuant's U GEMM: int16 activation codes x (n, c, h, w) and int16 gradient
 * values g (n*ho*wo, m), both contiguous, every value in [-255, 255] (the caller checks; the UINT8 codes
 * of the INT8 forward and of the 8-bit per-column gradient quantizer): out (c*kh*kw, m) = im2col(x)^T g
 * exactly, as int64. A product is at most 255 * 255 = 65025 in magnitude; one output row (wo products per
 * term) is summed in int32 and added to int32 accumulators, which are flushed into the int64 result
 * before another row could take them past 2**31 - 1 (the caller checks wo * 65025 <= 2**31 - 1): nothing
 * is rounded, so any order gives the same integers as the float64 convolution it replaces (exact to
 * 2**53). The int32 scratch (c*kh*kw*m entries) and, for the AVX2 sample path, `scratch`
 * (tetrad_stat_wgrad_scratch bytes; NULL: the row paths) come from the caller. Padding adds nothing. */
#define STAT_WG_PROD 65025
#define STAT_WG_MAX_M 64
#define STAT_WG_MAX_PAIRS 64
#define STAT_WG_PAD_MAX 512

/* Every (ci, i, j) term of output row (b, oh), any stride, in int32 (the portable form). */
static void stat_wgrad_row(const int16_t *restrict xb, const int16_t *restrict grow, int64_t c, int64_t h,
                           int64_t w, int64_t m, int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t ph,
                           int64_t pw, int64_t sh, int64_t sw, int64_t oh, int64_t wo,
                           int32_t *restrict acc) {
    for (int64_t ci = 0; ci < c; ++ci)
        for (int64_t i = 0; i < kh; ++i) {
            const int64_t r = oh * sh - ph + i * dh;
            if (r < 0 || r >= h)
                continue;
            const int16_t *xr = xb + (ci * h + r) * w;
            for (int64_t j = 0; j < kw; ++j) {
                int32_t *a = acc + ((ci * kh + i) * kw + j) * m;
                for (int64_t ow = 0; ow < wo; ++ow) {
                    const int64_t col = ow * sw - pw + j * dw;
                    if (col < 0 || col >= w)
                        continue;
                    const int32_t xv = xr[col];
                    const int16_t *gp = grow + ow * m;
                    for (int64_t k = 0; k < m; ++k)
                        a[k] += xv * (int32_t)gp[k];
                }
            }
        }
}

#if BG_MADD
/* stat_wgrad_row for stride 1 along the row, m a multiple of 8, with AVX2's vpmaddwd, as the INT8
 * kernel's wgrad_row_8_madd: the row's gradient is laid out once as pairs (g[2q][k], g[2q+1][k]) of int16
 * (m / 8 vectors per pair q), each input row copied once into a zero-padded row and its neighbouring pairs
 * (x[u], x[u+1]) as int32 words; every term then runs over all wo positions in whole pairs (a padded
 * position adds x = 0), one broadcast word and m / 8 multiply-adds a pair; an odd last position goes
 * alone. A pair sum is at most 2 * 65025 in magnitude (exact; vpmaddwd's one overflow, -32768 * -32768
 * twice, cannot occur). The same integer products, summed in int32: the same integers. The caller checks
 * wo <= 2 * STAT_WG_MAX_PAIRS, m <= STAT_WG_MAX_M and w + 2 * pw <= STAT_WG_PAD_MAX. */
__attribute__((target("avx2"), noinline)) static void stat_wgrad_row_madd(
        const int16_t *restrict xb, const int16_t *restrict grow, int64_t c, int64_t h, int64_t w, int64_t m,
        int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t pw, int64_t r0, int64_t wo,
        int32_t *restrict acc) {
    __m256i gp[STAT_WG_MAX_PAIRS * (STAT_WG_MAX_M / 8)];
    int16_t xpad[STAT_WG_PAD_MAX];
    int32_t xpair[STAT_WG_PAD_MAX];
    const int64_t mv = m / 8, npair = wo / 2, wpad = w + 2 * pw;
    for (int64_t q = 0; q < npair; ++q)
        for (int64_t v = 0; v < mv; ++v) {
            const __m128i g0 = _mm_loadu_si128((const __m128i *)(grow + 2 * q * m + 8 * v));
            const __m128i g1 = _mm_loadu_si128((const __m128i *)(grow + (2 * q + 1) * m + 8 * v));
            gp[q * mv + v] = _mm256_set_m128i(_mm_unpackhi_epi16(g0, g1), _mm_unpacklo_epi16(g0, g1));
        }
    memset(xpad, 0, sizeof xpad);
    const int16_t *glast = grow + (wo - 1) * m;
    for (int64_t ci = 0; ci < c; ++ci)
        for (int64_t i = 0; i < kh; ++i) {
            const int64_t r = r0 + i * dh;
            if (r < 0 || r >= h)
                continue;
            memcpy(xpad + pw, xb + (ci * h + r) * w, (size_t)w * sizeof *xpad);
            for (int64_t u = 0; u + 1 < wpad; ++u)
                xpair[u] = (int32_t)((uint32_t)(uint16_t)xpad[u] | ((uint32_t)(uint16_t)xpad[u + 1] << 16));
            for (int64_t j = 0; j < kw; ++j) {
                const int16_t *xs = xpad + j * dw;      /* position ow reads xs[ow] */
                const int32_t *xps = xpair + j * dw;    /* positions 2q, 2q + 1: xps[2q] */
                int32_t *a = acc + ((ci * kh + i) * kw + j) * m;
                for (int64_t v = 0; v < mv; ++v) {
                    __m256i s = _mm256_setzero_si256();
                    for (int64_t q = 0; q < npair; ++q)
                        s = _mm256_add_epi32(s, _mm256_madd_epi16(gp[q * mv + v], _mm256_set1_epi32(xps[2 * q])));
                    if (wo & 1)
                        s = _mm256_add_epi32(s, _mm256_mullo_epi32(
                                _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(glast + 8 * v))),
                                _mm256_set1_epi32((int32_t)xs[wo - 1])));
                    _mm256_storeu_si256((__m256i *)(a + 8 * v),
                                        _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(a + 8 * v)), s));
                }
            }
        }
}
#endif

#if BG_MADD
/* stat_wgrad_row_madd for a whole sample b at once (stride 1 along the rows, m a multiple of 8): its
 * gradient laid out once as pairs per output row (as there) and the last position of odd rows as int32,
 * each input channel copied once into a zero-padded image (zero rows included, so no row is skipped) with
 * its neighbouring pairs as int32 words; every term then runs over all the sample's positions in one
 * accumulator, added to acc once -- fewer per-term operations than row by row. The same integer products,
 * summed in int32 (the caller flushes acc per sample): the same integers. Scratch: stat_wgrad_scratch. */
static int64_t stat_wgrad_sample_bytes(int64_t c, int64_t h, int64_t w, int64_t m, int64_t ph, int64_t pw,
                                       int64_t ho, int64_t wo) {
    const int64_t vec = (ho * (wo / 2) + ho) * (m / 8) * (int64_t)sizeof(__m256i);
    return vec + (h + 2 * ph) * (w + 2 * pw) * c * (int64_t)(sizeof(int16_t) + sizeof(int32_t)) + 64;
}

__attribute__((target("avx2"), noinline)) static void stat_wgrad_sample_madd(
        const int16_t *restrict xb, const int16_t *restrict gb, int64_t c, int64_t h, int64_t w, int64_t m,
        int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t ph, int64_t pw, int64_t sh, int64_t ho,
        int64_t wo, unsigned char *scratch, int32_t *restrict acc) {
    const int64_t mv = m / 8, npair = wo / 2, hp = h + 2 * ph, wp = w + 2 * pw;
    __m256i *gp = (__m256i *)(((uintptr_t)scratch + 31) & ~(uintptr_t)31);
    __m256i *gl = gp + ho * npair * mv;
    int16_t *xpad = (int16_t *)(gl + ho * mv);
    int32_t *xpair = (int32_t *)(xpad + c * hp * wp);
    for (int64_t oh = 0; oh < ho; ++oh) {
        const int16_t *grow = gb + oh * wo * m;
        for (int64_t q = 0; q < npair; ++q)
            for (int64_t v = 0; v < mv; ++v) {
                const __m128i g0 = _mm_loadu_si128((const __m128i *)(grow + 2 * q * m + 8 * v));
                const __m128i g1 = _mm_loadu_si128((const __m128i *)(grow + (2 * q + 1) * m + 8 * v));
                gp[(oh * npair + q) * mv + v] =
                    _mm256_set_m128i(_mm_unpackhi_epi16(g0, g1), _mm_unpacklo_epi16(g0, g1));
            }
        if (wo & 1)
            for (int64_t v = 0; v < mv; ++v)
                gl[oh * mv + v] =
                    _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(grow + (wo - 1) * m + 8 * v)));
    }
    memset(xpad, 0, (size_t)(c * hp * wp) * sizeof *xpad);
    for (int64_t ci = 0; ci < c; ++ci) {
        int16_t *xi = xpad + ci * hp * wp;
        int32_t *pi = xpair + ci * hp * wp;
        for (int64_t r = 0; r < h; ++r)
            memcpy(xi + (r + ph) * wp + pw, xb + (ci * h + r) * w, (size_t)w * sizeof *xi);
        for (int64_t e = 0; e + 1 < hp * wp; ++e)
            pi[e] = (int32_t)((uint32_t)(uint16_t)xi[e] | ((uint32_t)(uint16_t)xi[e + 1] << 16));
    }
    for (int64_t ci = 0; ci < c; ++ci)
        for (int64_t i = 0; i < kh; ++i)
            for (int64_t j = 0; j < kw; ++j) {
                int32_t *a = acc + ((ci * kh + i) * kw + j) * m;
                for (int64_t v = 0; v < mv; ++v) {
                    __m256i s = _mm256_setzero_si256();
                    for (int64_t oh = 0; oh < ho; ++oh) {
                        const int64_t e = ci * hp * wp + (oh * sh + i * dh) * wp + j * dw;  /* padded (row, ow=0) */
                        const int32_t *xps = xpair + e;
                        const __m256i *g = gp + oh * npair * mv + v;
                        for (int64_t q = 0; q < npair; ++q)
                            s = _mm256_add_epi32(s, _mm256_madd_epi16(g[q * mv], _mm256_set1_epi32(xps[2 * q])));
                        if (wo & 1)
                            s = _mm256_add_epi32(s, _mm256_mullo_epi32(gl[oh * mv + v],
                                                                       _mm256_set1_epi32((int32_t)xpad[e + wo - 1])));
                    }
                    _mm256_storeu_si256((__m256i *)(a + 8 * v),
                                        _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(a + 8 * v)), s));
                }
            }
}
#endif

/* Bytes of scratch tetrad_stat_conv_wgrad_i16 needs beyond its int32 accumulators (0 if none). */
int64_t tetrad_stat_wgrad_scratch(int64_t c, int64_t h, int64_t w, int64_t m, int64_t ph, int64_t pw, int64_t ho,
                                  int64_t wo) {
#if BG_MADD
    return stat_wgrad_sample_bytes(c, h, w, m, ph, pw, ho, wo);
#else
    (void)c, (void)h, (void)w, (void)m, (void)ph, (void)pw, (void)ho, (void)wo;
    return 0;
#endif
}

void tetrad_stat_conv_wgrad_i16(const int16_t *x, const int16_t *g, int64_t n, int64_t c, int64_t h,
                                int64_t w, int64_t m, int64_t kh, int64_t kw, int64_t dh, int64_t dw,
                                int64_t ph, int64_t pw, int64_t sh, int64_t sw, int64_t ho, int64_t wo,
                                int32_t *acc, int64_t *out, unsigned char *scratch) {
    const int64_t kk = c * kh * kw, row_max = (int64_t)STAT_WG_PROD * wo;
    memset(out, 0, (size_t)(kk * m) * sizeof *out);
    memset(acc, 0, (size_t)(kk * m) * sizeof *acc);
    int64_t pending = 0;   /* largest magnitude the accumulators may hold now */
#if BG_MADD
    const int madd = m % 8 == 0 && m <= STAT_WG_MAX_M && sw == 1 && wo <= 2 * STAT_WG_MAX_PAIRS
                     && w + 2 * pw <= STAT_WG_PAD_MAX && bg_have_avx2();
    /* a whole sample at once where its int32 sums cannot overflow */
    if (madd && scratch && row_max * ho <= INT32_MAX) {
        for (int64_t b = 0; b < n; ++b) {
            if (pending + row_max * ho > INT32_MAX) {
                for (int64_t k = 0; k < kk * m; ++k) {
                    out[k] += acc[k];
                    acc[k] = 0;
                }
                pending = 0;
            }
            pending += row_max * ho;
            stat_wgrad_sample_madd(x + b * c * h * w, g + b * ho * wo * m, c, h, w, m, kh, kw, dh, dw, ph, pw, sh,
                                   ho, wo, scratch, acc);
        }
        for (int64_t k = 0; k < kk * m; ++k)
            out[k] += acc[k];
        return;
    }
#endif
    for (int64_t b = 0; b < n; ++b)
        for (int64_t oh = 0; oh < ho; ++oh) {
            if (pending + row_max > INT32_MAX) {
                for (int64_t k = 0; k < kk * m; ++k) {
                    out[k] += acc[k];
                    acc[k] = 0;
                }
                pending = 0;
            }
            pending += row_max;
            const int16_t *xb = x + b * c * h * w, *grow = g + (b * ho + oh) * wo * m;
#if BG_MADD
            if (madd) {
                stat_wgrad_row_madd(xb, grow, c, h, w, m, kh, kw, dh, dw, pw, oh * sh - ph, wo, acc);
                continue;
            }
#endif
            stat_wgrad_row(xb, grow, c, h, w, m, kh, kw, dh, dw, ph, pw, sh, sw, oh, wo, acc);
        }
    for (int64_t k = 0; k < kk * m; ++k)
        out[k] += acc[k];
}

/* The extrema of each slice of a float32 matrix a (rows, cols), row-major, for host.quant.statquant's
 * per-row (axis 0: mn[r] = a[r, :].amin(), mx[r] likewise) and per-column (axis 1: over a[:, c]) min/max
 * quantizers. The minimum and maximum of finite floats are unique up to the sign of a zero extreme, so
 * any order of comparison gives ATen's values, except for a slice whose elements are all zeros of both
 * signs, where ATen's choice of -0.0 or +0.0 depends on its order: the function returns 2 (the caller
 * then uses torch's reductions) if a slice has min == max == 0 and mixed signs, 1 if an element is NaN or
 * Inf (the extrema are then not meaningful), else 0. A slice of equal zeros gets their sign, as in
 * torch. */
static inline uint32_t stat_bits(float v) {
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}

/* 1 if the slice (count elements, stride apart) holds zeros of both signs. */
static int stat_mixed_zeros(const float *a, int64_t count, int64_t stride) {
    const uint32_t first = stat_bits(a[0]);
    for (int64_t t = 1; t < count; ++t)
        if (stat_bits(a[t * stride]) != first)
            return 1;
    return 0;
}

/* The portable reduction: a running minimum and maximum per slice, and the largest |bits| of any element
 * (an exponent field of all ones, 0x7f800000 or above, is Inf or NaN). */
static uint32_t stat_extrema_scalar(const float *a, int64_t rows, int64_t cols, int axis, float *mn,
                                    float *mx) {
    uint32_t big = 0;
    const int64_t slices = axis == 0 ? rows : cols, len = axis == 0 ? cols : rows;
    const int64_t step = axis == 0 ? 1 : cols, next = axis == 0 ? cols : 1;
    for (int64_t k = 0; k < slices; ++k) {
        const float *p = a + k * next;
        float lo = p[0], hi = p[0];
        for (int64_t t = 0; t < len; ++t) {
            const float v = p[t * step];
            const uint32_t b = stat_bits(v) & 0x7FFFFFFFu;
            big = b > big ? b : big;
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        mn[k] = lo;
        mx[k] = hi;
    }
    return big;
}

#if BG_MADD
/* stat_extrema_scalar with AVX2, eight lanes: per row (axis 0, each row reduced in lanes, then across
 * them and its tail) or per column (axis 1, cols a multiple of 8: eight columns a vector, down the rows). */
__attribute__((target("avx2"), noinline)) static uint32_t stat_extrema_avx2(
        const float *a, int64_t rows, int64_t cols, int axis, float *mn, float *mx) {
    const __m256i absmask = _mm256_set1_epi32(0x7FFFFFFF);
    __m256i big = _mm256_setzero_si256();
    uint32_t big_tail = 0;
    if (axis == 0) {
        for (int64_t r = 0; r < rows; ++r) {
            const float *p = a + r * cols;
            float lo = p[0], hi = p[0];
            int64_t t = 0;
            if (cols >= 8) {
                __m256 vlo = _mm256_loadu_ps(p), vhi = vlo;
                for (; t + 8 <= cols; t += 8) {
                    const __m256 v = _mm256_loadu_ps(p + t);
                    big = _mm256_max_epu32(big, _mm256_and_si256(_mm256_castps_si256(v), absmask));
                    vlo = _mm256_min_ps(vlo, v);
                    vhi = _mm256_max_ps(vhi, v);
                }
                float l[8], h[8];
                _mm256_storeu_ps(l, vlo);
                _mm256_storeu_ps(h, vhi);
                for (int k = 0; k < 8; ++k) {
                    lo = l[k] < lo ? l[k] : lo;
                    hi = h[k] > hi ? h[k] : hi;
                }
            }
            for (; t < cols; ++t) {
                const float v = p[t];
                const uint32_t b = stat_bits(v) & 0x7FFFFFFFu;
                big_tail = b > big_tail ? b : big_tail;
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
            mn[r] = lo;
            mx[r] = hi;
        }
    } else {
        for (int64_t c = 0; c < cols; c += 8) {
            __m256 vlo = _mm256_loadu_ps(a + c), vhi = vlo;
            for (int64_t r = 0; r < rows; ++r) {
                const __m256 v = _mm256_loadu_ps(a + r * cols + c);
                big = _mm256_max_epu32(big, _mm256_and_si256(_mm256_castps_si256(v), absmask));
                vlo = _mm256_min_ps(vlo, v);
                vhi = _mm256_max_ps(vhi, v);
            }
            _mm256_storeu_ps(mn + c, vlo);
            _mm256_storeu_ps(mx + c, vhi);
        }
    }
    uint32_t b[8];
    _mm256_storeu_si256((__m256i *)b, big);
    for (int k = 0; k < 8; ++k)
        big_tail = b[k] > big_tail ? b[k] : big_tail;
    return big_tail;
}
#endif

int tetrad_stat_extrema_f32(const float *a, int64_t rows, int64_t cols, int axis, float *mn, float *mx) {
    uint32_t big;
#if BG_MADD
    if (bg_have_avx2() && (axis == 0 || cols % 8 == 0))
        big = stat_extrema_avx2(a, rows, cols, axis, mn, mx);
    else
#endif
        big = stat_extrema_scalar(a, rows, cols, axis, mn, mx);
    if (big >= 0x7F800000u)
        return 1;
    const int64_t slices = axis == 0 ? rows : cols, len = axis == 0 ? cols : rows;
    for (int64_t k = 0; k < slices; ++k)
        if (mn[k] == 0.0f && mx[k] == 0.0f
            && stat_mixed_zeros(a + k * (axis == 0 ? cols : 1), len, axis == 0 ? 1 : cols))
            return 2;
    return 0;
}

/* One block of v = fl(fl(a - lo) * m) in float32, lo and m per row (axis 0) or per column (axis 1), for
 * the elements base .. base+n-1 of a row-major (rows, cols) matrix: host.quant.statquant's
 * (y2 - lo).mul_(scale), the same two IEEE operations on every element. */
static void stat_affine_block(const float *restrict a, int64_t cols, const float *restrict lo,
                              const float *restrict mult, int axis, int64_t base, int64_t n,
                              float *restrict v) {
    int64_t r = base / cols, c0 = base % cols;
    for (int64_t i = 0; i < n;) {
        const int64_t len = cols - c0 < n - i ? cols - c0 : n - i;
        const float *restrict ap = a + base + i;
        float *restrict vp = v + i;
        if (axis == 1) {
            const float *restrict lp = lo + c0, *restrict mp = mult + c0;
            for (int64_t t = 0; t < len; ++t)
                vp[t] = (ap[t] - lp[t]) * mp[t];
        } else {
            const float l = lo[r], m = mult[r];
            for (int64_t t = 0; t < len; ++t)
                vp[t] = (ap[t] - l) * m;
        }
        i += len;
        ++r;
        c0 = 0;
    }
}

#if BG_MADD
/* sr16_i8_avx2 for int16 codes: the same integer form of clamp(floor((double)v + (double)u), lo, hi) (see
 * sr_block_i8: v clamped to [lo - 1, hi + 1] first, then floor(v * 2**17) + 2 s + 2**16 + 1 shifted right
 * by 17), exact while the clamped v * 2**17 and that sum stay in int32, which the caller's bound
 * -16383 <= lo <= hi <= 16382 ensures;
 * the codes packed to int16 (no saturation: they lie in [lo, hi]). Returns the elements done (whole
 * groups of 16 from a word boundary, offset % 4 == 0). */
__attribute__((target("avx2"))) static int64_t stat_sr16_i16_avx2(const float *v, int64_t n, uint64_t seed,
                                                                  uint64_t offset, int32_t lo, int32_t hi,
                                                                  int16_t *codes) {
    const __m256 flo = _mm256_set1_ps((float)(lo - 1)), fhi = _mm256_set1_ps((float)(hi + 1));
    const __m256 f = _mm256_set1_ps(131072.0f);
    const __m256i clo = _mm256_set1_epi32(lo), chi = _mm256_set1_epi32(hi), m0 = _mm256_set1_epi32(65537);
    const __m256i step = _mm256_set1_epi64x(4);
    __m256i w0 = _mm256_add_epi64(_mm256_set1_epi64x((long long)((seed << 32) + offset / 4u)),
                                  _mm256_setr_epi64x(0, 1, 2, 3));
    int64_t i = 0;
    for (; i + 16 <= n; i += 16, w0 = _mm256_add_epi64(w0, step)) {
        const __m256i d = mix64_avx2(w0);
        __m256i c[2];
        for (int half = 0; half < 2; ++half) {
            const __m256i s = _mm256_cvtepi16_epi32(half ? _mm256_extracti128_si256(d, 1)
                                                         : _mm256_castsi256_si128(d));
            const __m256 x = _mm256_min_ps(_mm256_max_ps(_mm256_loadu_ps(v + i + 8 * half), flo), fhi);
            const __m256i t = _mm256_cvttps_epi32(_mm256_floor_ps(_mm256_mul_ps(x, f)));
            const __m256i m = _mm256_add_epi32(_mm256_slli_epi32(s, 1), m0);
            const __m256i q = _mm256_srai_epi32(_mm256_add_epi32(t, m), 17);
            c[half] = _mm256_min_epi32(_mm256_max_epi32(q, clo), chi);
        }
        _mm256_storeu_si256((__m256i *)(codes + i),
                            _mm256_permute4x64_epi64(_mm256_packs_epi32(c[0], c[1]), 0xD8));
    }
    return i;
}
#endif

/* host.quant.statquant._minmax_sr's pass for float32 a (rows, cols), row-major: v = fl(fl(a - lo) * m)
 * (stat_affine_block), then tetrad_sr_codes_f32 of v (draws 0 .. of stream `seed`), codes in [qlo, qhi]
 * as int8 (code_bytes 1) or int16 (2; with AVX2 and 16-bit draws in stat_sr16_i16_avx2's range, its
 * integer form). */
void tetrad_stat_affine_sr_codes_f32(const float *a, int64_t rows, int64_t cols, const float *lo,
                                     const float *mult, int axis, uint64_t seed, int bits, int32_t qlo,
                                     int32_t qhi, int code_bytes, void *codes) {
    int32_t buf[CHUNK + 32];
    float v[CHUNK];
    const int64_t count = rows * cols;
    const double dlo = (double)qlo, dhi = (double)qhi;
    const float scale = 1.0f / (float)((int64_t)1 << bits);
    const float shift = 0.5f + scale * 0.5f;
#if BG_MADD
    const int fast16 = code_bytes == 2 && bits == 16 && qlo >= -16383 && qhi <= 16382 && bg_have_avx2();
#endif
    for (int64_t base = 0; base < count; base += CHUNK) {
        const int64_t n = count - base < CHUNK ? count - base : CHUNK;
        stat_affine_block(a, cols, lo, mult, axis, base, n, v);
        if (code_bytes == 1) {
            sr_chunk_i8(v, n, seed, (uint64_t)base, bits, qlo, qhi, (int8_t *)codes + base, buf);
            continue;
        }
        int16_t *c16 = (int16_t *)codes + base;
        int64_t done = 0;
#if BG_MADD
        if (fast16)     /* base is a multiple of CHUNK: a word boundary */
            done = stat_sr16_i16_avx2(v, n, seed, (uint64_t)base, qlo, qhi, c16);
#endif
        if (done < n)
            sr_block_i16(v + done, signed_draws(seed, (uint64_t)(base + done), n - done, bits, buf), n - done,
                         scale, shift, dlo, dhi, c16 + done);
    }
}

/* A convolution's B GEMM for StatQuant, fused with host.nn.operand.matmul's rescale and zero-point terms
 * and with col2im: weights w (m, kk) int16 with a per-tensor zero-point, gradient codes g (n*L, m) (int8,
 * g_bytes 1, or int16, g_bytes 2) with per-position scales and zero-points (PSQ's per-sample grid), kk =
 * (ci, i, j) the im2col column, p = (b, oh, ow) the output position, L = ho * wo. Per sample b:
 *   1. the exact GEMM integers I[p][kk] = sum_k w[k][kk] * g[p][k] in int32 (the caller checks
 *      m * max|w| * max|g| <= 2**24, so every sum is exact and converts to float32 exactly, as
 *      host.gemm.qgemm's float32 GEMM computes it), laid out per position with the columns in
 *      (i, j, ci) order;
 *   2. per element matmul's v = fl(fl(fl(fl(I * S) + fl(A * row)) + U) + V) with the float32 vectors
 *      S = fl(s_w * s_g), A = fl(s_w * o_g), OS = fl(o_w * s_g), V = fl(fl(o_w * o_g) * m) per position,
 *      U = fl(OS * colsum) with colsum the position's code sum (an exact integer, converted exactly), and
 *      rowp, the weight code sums per column in (i, j, ci) order -- out.mul_, then its three out.add_, in
 *      order;
 *   3. v added onto the zero image img, channels last (n, h, w, c), kernel offset by kernel offset in
 *      (i, j) order: every pixel is ((0 + v_00) + v_01) + ... over its kernel offsets, the order of ATen's
 *      col2im (which adds the columns in (ci, i, j) order; the channels never meet); a pixel only takes
 *      values of its own sample, so going sample by sample keeps it.
 * The same integers and the same IEEE operations on them: the same floats as matmul then col2im/F.fold.
 * Scratch (int32-sized): ceil(m/2) * (kk + 1) + L * (kk + 1) entries. */
static inline int32_t stat_pair(int32_t lo, int32_t hi) {
    return (int32_t)((uint32_t)(uint16_t)(int16_t)lo | ((uint32_t)(uint16_t)(int16_t)hi << 16));
}

static inline int32_t stat_code(const void *g, int g_bytes, int64_t idx) {
    return g_bytes == 1 ? (int32_t)((const int8_t *)g)[idx] : (int32_t)((const int16_t *)g)[idx];
}

/* ib[k] for k in [k0, kk) = sum over pairs t of lo(ww[t][k]) * lo(gw[t]) + hi(ww[t][k]) * hi(gw[t]):
 * the portable form. */
static void stat_dgrad_ints(const int32_t *restrict gw, const int32_t *restrict ww, int64_t mp, int64_t kk,
                            int64_t k0, int32_t *restrict ib) {
    for (int64_t k = k0; k < kk; ++k) {
        int32_t acc = 0;
        for (int64_t t = 0; t < mp; ++t) {
            const int32_t a = ww[t * kk + k], b = gw[t];
            acc += (int32_t)(int16_t)(a & 0xFFFF) * (int32_t)(int16_t)(b & 0xFFFF)
                   + (int32_t)(int16_t)((uint32_t)a >> 16) * (int32_t)(int16_t)((uint32_t)b >> 16);
        }
        ib[k] = acc;
    }
}

#if BG_MADD
/* stat_dgrad_ints for eight columns at a time with AVX2's vpmaddwd (exact: the caller's bound keeps every
 * product, and so every pair sum, far below 2**31). Returns the columns done. */
__attribute__((target("avx2"), noinline)) static int64_t stat_dgrad_ints_avx2(
        const int32_t *restrict gw, const int32_t *restrict ww, int64_t mp, int64_t kk, int32_t *restrict ib) {
    const int64_t k8 = kk - kk % 8;
    for (int64_t k = 0; k < k8; k += 8) {
        __m256i s = _mm256_setzero_si256();
        for (int64_t t = 0; t < mp; ++t)
            s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(ww + t * kk + k)),
                                                      _mm256_set1_epi32(gw[t])));
        _mm256_storeu_si256((__m256i *)(ib + k), s);
    }
    return k8;
}
#endif

/* Steps 2-3 for one sample: its values onto its channels-last image. */
VECTOR_CLONES __attribute__((noinline)) static void stat_dgrad_fold(
        const int32_t *restrict ib, const float *restrict S, const float *restrict A, const float *restrict U,
        const float *restrict V, const float *restrict rowp, int64_t c, int64_t h, int64_t w, int64_t kh,
        int64_t kw, int64_t dh, int64_t dw, int64_t ph, int64_t pw, int64_t sh, int64_t sw, int64_t ho,
        int64_t wo, float *restrict img) {
    const int64_t kk = c * kh * kw;
    for (int64_t i = 0; i < kh; ++i)
        for (int64_t j = 0; j < kw; ++j) {
            const int64_t col0 = (i * kw + j) * c;
            const float *restrict r = rowp + col0;
            for (int64_t oh = 0; oh < ho; ++oh) {
                const int64_t ih = oh * sh - ph + i * dh;
                if (ih < 0 || ih >= h)
                    continue;
                for (int64_t ow = 0; ow < wo; ++ow) {
                    const int64_t iw = ow * sw - pw + j * dw;
                    if (iw < 0 || iw >= w)
                        continue;
                    const int64_t q = oh * wo + ow;
                    const int32_t *restrict iq = ib + q * kk + col0;
                    const float s = S[q], a = A[q], u = U[q], v = V[q];
                    float *restrict dst = img + (ih * w + iw) * c;
                    for (int64_t ci = 0; ci < c; ++ci) {
                        const float t = a * r[ci];
                        dst[ci] += (((float)iq[ci] * s + t) + u) + v;
                    }
                }
            }
        }
}

/* rows != NULL: steps 1-2 only, for BHQ (whose inverse transform comes between the GEMM and col2im): the
 * columns in their own (ci, i, j) order, rowp in that order too, and each v widened (exactly) to float64
 * into rows (n*L, kk), row-major -- the .double() of the B GEMM's result matrix; img is not used. */
void tetrad_stat_conv_dgrad_affine(const int16_t *w, const void *g, int g_bytes, const float *S, const float *A,
                                   const float *OS, const float *V, const float *rowp, int64_t n, int64_t c,
                                   int64_t h, int64_t wd, int64_t m, int64_t kh, int64_t kw, int64_t dh,
                                   int64_t dw, int64_t ph, int64_t pw, int64_t sh, int64_t sw, int64_t ho,
                                   int64_t wo, int32_t *scratch, float *img, double *rows) {
    const int64_t kk = c * kh * kw, L = ho * wo, mp = (m + 1) / 2;
    int32_t *ww = scratch, *gw = ww + mp * kk, *ib = gw + mp;
    float *U = (float *)(ib + L * kk);
    /* the weights' pairs (w[2t][col], w[2t+1][col]), columns in (i, j, ci) order (for the fold) */
    for (int64_t t = 0; t < mp; ++t)
        for (int64_t ci = 0; ci < c; ++ci)
            for (int64_t ij = 0; ij < kh * kw; ++ij) {
                const int64_t k = ci * kh * kw + ij;
                ww[t * kk + (rows ? k : ij * c + ci)] =
                    stat_pair(w[2 * t * kk + k], 2 * t + 1 < m ? w[(2 * t + 1) * kk + k] : 0);
            }
    if (!rows)
        memset(img, 0, (size_t)(n * c * h * wd) * sizeof *img);
#if BG_MADD
    const int avx2 = bg_have_avx2();
#endif
    for (int64_t b = 0; b < n; ++b) {
        const int64_t p0 = b * L;
        for (int64_t q = 0; q < L; ++q) {
            const int64_t e = (p0 + q) * m;
            int32_t colsum = 0;
            for (int64_t t = 0; t < mp; ++t) {
                const int32_t lo = stat_code(g, g_bytes, e + 2 * t);
                const int32_t hi = 2 * t + 1 < m ? stat_code(g, g_bytes, e + 2 * t + 1) : 0;
                gw[t] = stat_pair(lo, hi);
                colsum += lo + hi;
            }
            U[q] = OS[p0 + q] * (float)colsum;
            int64_t done = 0;
#if BG_MADD
            if (avx2)
                done = stat_dgrad_ints_avx2(gw, ww, mp, kk, ib + q * kk);
#endif
            stat_dgrad_ints(gw, ww, mp, kk, done, ib + q * kk);
            if (rows) {
                const int32_t *iq = ib + q * kk;
                const float sq = S[p0 + q], aq = A[p0 + q], uq = U[q], vq = V[p0 + q];
                double *dst = rows + (p0 + q) * kk;
                for (int64_t k = 0; k < kk; ++k) {
                    const float t = aq * rowp[k];
                    dst[k] = (double)((((float)iq[k] * sq + t) + uq) + vq);
                }
            }
        }
        if (!rows)
            stat_dgrad_fold(ib, S + p0, A + p0, U, V + p0, rowp, c, h, wd, kh, kw, dh, dw, ph, pw, sh, sw, ho, wo,
                            img + b * h * wd * c);
    }
}

/* col2im of float64 rows (n*L, kk), row-major, each value first rounded to float32 (torch's .to(float32),
 * round to nearest even): img (n, h, w, c) channels last = 0 + the values, kernel offset by kernel offset
 * in (i, j) order -- ATen's col2im order, as in stat_dgrad_fold. BHQ's dX after its inverse transform. */
VECTOR_CLONES
void tetrad_stat_fold_f64(const double *restrict rows, int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh,
                          int64_t kw, int64_t dh, int64_t dw, int64_t ph, int64_t pw, int64_t sh, int64_t sw,
                          int64_t ho, int64_t wo, float *restrict img) {
    const int64_t kk = c * kh * kw, khw = kh * kw;
    memset(img, 0, (size_t)(n * c * h * w) * sizeof *img);
    for (int64_t b = 0; b < n; ++b)
        for (int64_t i = 0; i < kh; ++i)
            for (int64_t j = 0; j < kw; ++j)
                for (int64_t oh = 0; oh < ho; ++oh) {
                    const int64_t ih = oh * sh - ph + i * dh;
                    if (ih < 0 || ih >= h)
                        continue;
                    for (int64_t ow = 0; ow < wo; ++ow) {
                        const int64_t iw = ow * sw - pw + j * dw;
                        if (iw < 0 || iw >= w)
                            continue;
                        const double *restrict src = rows + ((b * ho + oh) * wo + ow) * kk + i * kw + j;
                        float *restrict dst = img + ((b * h + ih) * w + iw) * c;
                        for (int64_t ci = 0; ci < c; ++ci)
                            dst[ci] += (float)src[ci * khw];
                    }
                }
}

/* t.sum(dim=0, dtype=torch.int64) of a contiguous int8 (elem_bytes 1) or int16 (2) tensor t of n samples
 * of `inner` elements each: out[e] = sum_b t[b][e] as int64 (exact in any order; torch converts t to int64
 * first, a copy of the whole tensor). */
VECTOR_CLONES
void tetrad_stat_batch_sum(const void *t, int elem_bytes, int64_t n, int64_t inner, int64_t *restrict out) {
    memset(out, 0, (size_t)inner * sizeof *out);
    for (int64_t b = 0; b < n; ++b) {
        if (elem_bytes == 1) {
            const int8_t *restrict x = (const int8_t *)t + b * inner;
            for (int64_t e = 0; e < inner; ++e)
                out[e] += x[e];
        } else {
            const int16_t *restrict x = (const int16_t *)t + b * inner;
            for (int64_t e = 0; e < inner; ++e)
                out[e] += x[e];
        }
    }
}

/* host.nn.operand.matmul's rescale and zero-point terms for a convolution's F GEMM with per-tensor
 * scales and zero-points on both sides (StatQuant's INT8 forward), in place on out (n*L, m), the exact GEMM
 * integers as float32, L = ho * wo positions per sample. Per output element (p = (b, q), column k):
 *     v = fl(fl(fl(fl(out * s) + fl(c1 * row_p)) + fl(c2 * mb[q][k])) + fl(c3 * cnt[q]))
 * -- out.mul_(sa * sb), then out.add_ of (sa * ob) * row, (oa * sb) * mask_product and (oa * ob) *
 * mask_count, in matmul's order -- with row_p the sum of the activation codes in p's receptive field
 * (the ones-kernel convolution host.nn.functional._ConvSumsF.row computes: an exact integer, computed
 * here in int32 from x (n, h, w, c) channels last, int8 (x_bytes 1) or int16 (2), as the sum over kernel
 * offsets of the zero-padded channel-sum image; the caller checks c * kh * kw * max|x| <= 2**24, so it
 * converts to float32 exactly), and mb[q][k] (the weight codes w (m, c, kh, kw), int8 or int16 (w_bytes),
 * summed over the kernel offsets that read inside the image at q) and cnt[q] (c times the number of those
 * offsets): the one-image mask product and count that _ConvSumsF gets from convolutions of a ones image,
 * exact integers (the caller's bound covers them) converted exactly, the same for every sample. The same
 * IEEE operations on the same values. Scratch (int32-sized): (h + 2 ph) * (w + 2 pw) + L * (m + 2) + m * kh * kw. */
VECTOR_CLONES __attribute__((noinline)) static void stat_fwd_rows(
        const void *x, int x_bytes, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t dh,
        int64_t dw, int64_t ph, int64_t pw, int64_t sh, int64_t sw, int64_t ho, int64_t wo,
        int32_t *restrict pad, int32_t *restrict rows) {
    const int64_t wp = w + 2 * pw;
    for (int64_t r = 0; r < h; ++r)        /* the channel sums of the interior (the border stays 0) */
        for (int64_t u = 0; u < w; ++u) {
            const int64_t e = (r * w + u) * c;
            int32_t acc = 0;
            if (x_bytes == 1)
                for (int64_t ci = 0; ci < c; ++ci)
                    acc += ((const int8_t *)x)[e + ci];
            else
                for (int64_t ci = 0; ci < c; ++ci)
                    acc += ((const int16_t *)x)[e + ci];
            pad[(r + ph) * wp + u + pw] = acc;
        }
    memset(rows, 0, (size_t)(ho * wo) * sizeof *rows);
    for (int64_t i = 0; i < kh; ++i)
        for (int64_t j = 0; j < kw; ++j)
            for (int64_t oh = 0; oh < ho; ++oh) {
                const int32_t *restrict src = pad + (oh * sh + i * dh) * wp + j * dw;
                int32_t *restrict dst = rows + oh * wo;
                if (sw == 1)
                    for (int64_t ow = 0; ow < wo; ++ow)
                        dst[ow] += src[ow];
                else
                    for (int64_t ow = 0; ow < wo; ++ow)
                        dst[ow] += src[ow * sw];
            }
}

VECTOR_CLONES
void tetrad_stat_conv_fwd_affine(float *restrict out, const void *x, int x_bytes, int64_t n, int64_t c, int64_t h,
                                 int64_t w, int64_t m, int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t ph,
                                 int64_t pw, int64_t sh, int64_t sw, int64_t ho, int64_t wo, const void *wt,
                                 int w_bytes, float s, float c1, float c2, float c3, int32_t *scratch) {
    const int64_t L = ho * wo, npad = (h + 2 * ph) * (w + 2 * pw), khw = kh * kw;
    int32_t *pad = scratch, *rows = scratch + npad, *wsum = rows + L;
    float *mb = (float *)(wsum + m * khw), *cnt = mb + L * m;
    for (int64_t k = 0; k < m; ++k)          /* the weight codes summed over the channels, per offset */
        for (int64_t ij = 0; ij < khw; ++ij) {
            int32_t acc = 0;
            for (int64_t ci = 0; ci < c; ++ci) {
                const int64_t e = (k * c + ci) * khw + ij;
                acc += w_bytes == 1 ? ((const int8_t *)wt)[e] : ((const int16_t *)wt)[e];
            }
            wsum[k * khw + ij] = acc;
        }
    for (int64_t oh = 0; oh < ho; ++oh)
        for (int64_t ow = 0; ow < wo; ++ow) {
            const int64_t q = oh * wo + ow;
            int32_t taps = 0;
            for (int64_t k = 0; k < m; ++k)
                mb[q * m + k] = 0.0f;
            for (int64_t i = 0; i < kh; ++i) {
                const int64_t ih = oh * sh - ph + i * dh;
                for (int64_t j = 0; j < kw; ++j) {
                    const int64_t iw = ow * sw - pw + j * dw;
                    if (ih < 0 || ih >= h || iw < 0 || iw >= w)
                        continue;
                    ++taps;
                    for (int64_t k = 0; k < m; ++k)     /* exact: integers far below 2**24 */
                        mb[q * m + k] += (float)wsum[k * khw + i * kw + j];
                }
            }
            cnt[q] = (float)(taps * c);
        }
    memset(pad, 0, (size_t)npad * sizeof *pad);
    for (int64_t b = 0; b < n; ++b) {
        stat_fwd_rows((const char *)x + b * h * w * c * x_bytes, x_bytes, c, h, w, kh, kw, dh, dw, ph, pw, sh, sw,
                      ho, wo, pad, rows);
        for (int64_t q = 0; q < L; ++q) {
            const float t1 = c1 * (float)rows[q], t3 = c3 * cnt[q];
            const float *restrict mq = mb + q * m;
            float *restrict o = out + (b * L + q) * m;
            for (int64_t k = 0; k < m; ++k)
                o[k] = ((o[k] * s + t1) + c2 * mq[k]) + t3;
        }
    }
}

/* host.quant.forward.int8_per_tensor's codes for float32 x, in memory order: q = fl(x / step) (sub 0:
 * the zero-aligned weights) or q = fl(fl(x - offset) / step) (sub 1), then clamp(rne(q) + z, 0, qmax) as
 * int16 -- torch.round (half to even), .add_(z), .clamp_(0, qmax), .to(int16). Computed as
 * rne(clamp(q, -z, qmax - z)) + z, the same integer (the bounds are integers; rounding is monotone and
 * fixes them), with rne as in tetrad_sawb_codes_f32 (|q| <= qmax < 2**22 after the clamp). The caller
 * ensures 0 <= z <= qmax <= 32767. One function per form: inlined into one caller, GCC 12 does not
 * vectorize the loops. */
#define STAT_INT8_CODES(NAME, Q)                                                                      \
    VECTOR_CLONES __attribute__((noinline)) static void NAME(                                        \
            const float *restrict x, int64_t count, float offset, float step, int32_t z, int32_t qmax,  \
            int16_t *restrict codes) {                                                               \
        const float magic = 12582912.0f, lo = (float)-z, hi = (float)(qmax - z);                     \
        for (int64_t i = 0; i < count; ++i) {                                                        \
            float q = (Q);                                                                           \
            q = q < lo ? lo : q;                                                                     \
            q = q > hi ? hi : q;                                                                     \
            codes[i] = (int16_t)((int32_t)((q + magic) - magic) + z);                                \
        }                                                                                            \
    }
STAT_INT8_CODES(stat_int8_codes_div, x[i] / step)
STAT_INT8_CODES(stat_int8_codes_subdiv, (x[i] - offset) / step)

void tetrad_stat_int8_codes_f32(const float *x, int64_t count, int sub, float offset, float step, int32_t z,
                                int32_t qmax, int16_t *codes) {
    if (sub)
        stat_int8_codes_subdiv(x, count, offset, step, z, qmax, codes);
    else
        stat_int8_codes_div(x, count, offset, step, z, qmax, codes);
}

/* host.quant.statquant._minmax_sr's scale data for float32 slices with extrema mn, mx (count each), in
 * float64 and rounded once to float32, as its torch code computes them:
 *     const = mx == mn ;  lo = const ? mn : mn - margin ;  rng = (mx + margin) - lo
 *     scale = const ? 0 : fl(1 / rng) * B   (torch computes B / rng as rng.reciprocal() * B)
 *     step = const ? const_step : rng / B  (const_step the caller's float64 2 * margin / B)
 * Returns 1, writing nothing, if a range is not at most FLT_MAX (the caller's torch code raises then). */
int tetrad_stat_minmax_params_f32(const float *mn, const float *mx, int64_t count, double margin, int32_t B,
                                  double const_step, float *lo, float *scale, float *step) {
    for (int64_t k = 0; k < count; ++k) {
        const double a = mn[k], b = mx[k];
        const double rng = (b + margin) - (a == b ? a : a - margin);
        if (!(rng <= (double)FLT_MAX))
            return 1;
    }
    for (int64_t k = 0; k < count; ++k) {
        const double a = mn[k], b = mx[k];
        const int cst = a == b;
        const double l = cst ? a : a - margin;
        const double rng = (b + margin) - l;
        lo[k] = (float)l;
        scale[k] = cst ? 0.0f : (float)((1.0 / rng) * (double)B);
        step[k] = (float)(cst ? const_step : rng / (double)B);
    }
    return 0;
}

/* im2col(x).sum(dim=0) of int8 (x_bytes 1) or int16 (2) codes x (n, h, w, c) channels last, as int64:
 * out[(ci, i, j)] = sum over the samples and output positions of the input element each position's
 * kernel offset (i, j) reads (padding adds 0) -- the activation codes' term of a convolution's U GEMM
 * with a zero-point (host.nn.functional._ConvSumsU.row). Summed per channel over the batch first
 * (chan, c * h * w int64 scratch), then over the positions: exact integers, so any order gives the same. */
void tetrad_stat_window_sums(const void *x, int x_bytes, int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh,
                             int64_t kw, int64_t dh, int64_t dw, int64_t ph, int64_t pw, int64_t sh, int64_t sw,
                             int64_t ho, int64_t wo, int64_t *chan, int64_t *out) {
    const int64_t plane = h * w;
    memset(chan, 0, (size_t)(c * plane) * sizeof *chan);
    for (int64_t b = 0; b < n; ++b)
        for (int64_t e = 0; e < plane; ++e) {
            const int64_t src = (b * plane + e) * c;
            for (int64_t ci = 0; ci < c; ++ci)
                chan[ci * plane + e] += x_bytes == 1 ? ((const int8_t *)x)[src + ci] : ((const int16_t *)x)[src + ci];
        }
    for (int64_t ci = 0; ci < c; ++ci)
        for (int64_t i = 0; i < kh; ++i)
            for (int64_t j = 0; j < kw; ++j) {
                int64_t acc = 0;
                for (int64_t oh = 0; oh < ho; ++oh) {
                    const int64_t ih = oh * sh - ph + i * dh;
                    if (ih < 0 || ih >= h)
                        continue;
                    for (int64_t ow = 0; ow < wo; ++ow) {
                        const int64_t iw = ow * sw - pw + j * dw;
                        if (iw >= 0 && iw < w)
                            acc += chan[ci * plane + ih * w + iw];
                    }
                }
                out[(ci * kh + i) * kw + j] = acc;
            }
}


/* ==== luq: SAWB's range and norms in one pass (host.quant.sawb._stats) ==== */

/* For float32 x in storage order (the order torch reduces a dense tensor in), the four statistics SAWB
 * reads: out[0], out[1] = min and max (the sign of a zero extreme is not defined: SAWB never reads it);
 * out[2] = torch.linalg.vector_norm(x.double(), 1) before its (identity) projection, i.e. the float64 sum
 * ((0 + |x0|) + |x1|) + ... in element order -- ATen's one-thread generic reduction; out[3] = the float64
 * sum of squares as ATen's vectorized 2-norm forms it under sqrt: four lane sums, lane j over the
 * elements 4k + j of the first n - n % 4, then ((lane0 + lane1) + lane2) + lane3, then the tail added
 * in order. A float32's square is exact in float64 (48 significant bits), so a fused multiply-add and a
 * multiply then add give the same sums. Returns 1 if an element is NaN or infinite (out[2] is then not
 * finite: |x| cannot overflow a float64 sum of float32 magnitudes); the outputs are then not used. */
#if BG_MADD
/* tetrad_sawb_stats_f32's loop over the first m (a multiple of 4) elements with AVX2: per 4 floats one
 * conversion to 4 doubles, the four lane sums of squares in one vector (lane j holds elements 4k + j, as
 * ATen's), the min and max lanes as vector compares (minps(v, lo) is v < lo ? v : lo), and the 1-norm's
 * four serial adds. */
__attribute__((target("avx2"))) static double sawb_stats_avx2(const float *x, int64_t m, double *q, float *lo,
                                                               float *hi) {
    __m256d qv = _mm256_setzero_pd();
    __m128 lov = _mm_set1_ps(x[0]), hiv = lov;
    const __m256d sign = _mm256_set1_pd(-0.0);
    double s1 = 0.0;
    for (int64_t i = 0; i < m; i += 4) {
        const __m128 v = _mm_loadu_ps(x + i);
        const __m256d a = _mm256_cvtps_pd(v);
        qv = _mm256_add_pd(qv, _mm256_mul_pd(a, a));
        lov = _mm_min_ps(v, lov);
        hiv = _mm_max_ps(v, hiv);
        const __m256d ab = _mm256_andnot_pd(sign, a);
        const __m128d l = _mm256_castpd256_pd128(ab), h = _mm256_extractf128_pd(ab, 1);
        s1 = s1 + _mm_cvtsd_f64(l);
        s1 = s1 + _mm_cvtsd_f64(_mm_unpackhi_pd(l, l));
        s1 = s1 + _mm_cvtsd_f64(h);
        s1 = s1 + _mm_cvtsd_f64(_mm_unpackhi_pd(h, h));
    }
    _mm256_storeu_pd(q, qv);
    _mm_storeu_ps(lo, lov);
    _mm_storeu_ps(hi, hiv);
    return s1;
}
#endif

int tetrad_sawb_stats_f32(const float *restrict x, int64_t n, double *restrict out) {
    float lo[4] = {x[0], x[0], x[0], x[0]}, hi[4] = {x[0], x[0], x[0], x[0]};
    double s1 = 0.0, q[4] = {0.0, 0.0, 0.0, 0.0};
    const int64_t m = n - n % 4;
#if BG_MADD
    if (bg_have_avx2())
        s1 = sawb_stats_avx2(x, m, q, lo, hi);
    else
#endif
        /* the min and max in four independent lanes (their order does not matter) */
        for (int64_t i = 0; i < m; i += 4)
            for (int j = 0; j < 4; ++j) {
                const float v = x[i + j];
                const double a = v;
                s1 = s1 + __builtin_fabs(a);
                q[j] = q[j] + a * a;
                lo[j] = v < lo[j] ? v : lo[j];
                hi[j] = v > hi[j] ? v : hi[j];
            }
    double sq = ((q[0] + q[1]) + q[2]) + q[3];
    for (int64_t i = m; i < n; ++i) {
        const double a = x[i];
        s1 = s1 + __builtin_fabs(a);
        sq = sq + a * a;
        lo[0] = x[i] < lo[0] ? x[i] : lo[0];
        hi[0] = x[i] > hi[0] ? x[i] : hi[0];
    }
    for (int j = 1; j < 4; ++j) {
        lo[0] = lo[j] < lo[0] ? lo[j] : lo[0];
        hi[0] = hi[j] > hi[0] ? hi[j] : hi[0];
    }
    out[0] = lo[0];
    out[1] = hi[0];
    out[2] = s1;
    out[3] = sq;
    return !(s1 - s1 == 0.0);
}

/* ==== luq: naive-log4's flush below alpha (host.quant.luq._quantize, underflow="flush") ==== */

/* codes.masked_fill_(x.abs() < alpha, 0) for float32 x and int8 codes of the same layout: |x| by clearing
 * the sign bit, as torch's abs, compared with the float32 alpha (an exact compare, as torch's). */
VECTOR_CLONES
void tetrad_luq_flush_f32(const float *restrict x, int64_t n, float alpha, int8_t *restrict codes) {
    for (int64_t i = 0; i < n; ++i) {
        uint32_t b;
        memcpy(&b, &x[i], sizeof b);
        b &= 0x7FFFFFFFu;
        float a;
        memcpy(&a, &b, sizeof a);
        codes[i] = a < alpha ? 0 : codes[i];
    }
}

/* ==== luq: the conv B kernel's vpmaddubsw operands, eight positions at a time (tetrad_conv_bgrad) ==== */

#if BG_MADD
/* The 8 x 8 transpose of 16-bit words: r[i] word p -> r[p] word i. */
__attribute__((target("avx2"))) static inline void transpose8_epi16(__m128i r[8]) {
    __m128i t[8], u[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i)
        for (int k = 0; k < 2; ++k) {
            u[4 * i + 2 * k] = _mm_unpacklo_epi32(t[4 * i + k], t[4 * i + k + 2]);
            u[4 * i + 2 * k + 1] = _mm_unpackhi_epi32(t[4 * i + k], t[4 * i + k + 2]);
        }
    for (int k = 0; k < 4; ++k) {
        r[2 * k] = _mm_unpacklo_epi64(u[k], u[k + 4]);
        r[2 * k + 1] = _mm_unpackhi_epi64(u[k], u[k + 4]);
    }
}

/* bgrad_values_madd's result where no value is +128 and there is no shift operand: int codes (the value is
 * the code byte) or LOG codes in [-7, 7] (gmax <= 64; the byte shuffle of tetrad_log_values_i8), M a
 * multiple of 16. Position l of the padded layout (l = oh * ws + ow; 0 past wo or ho, as the memset
 * there leaves it) gets the 16-byte blocks of its row's values, eight positions at a time: the pair words
 * (v(2p), v(2p + 1)) of eight positions, transposed, are gp's words p * lp + l .. l + 7 -- the same bytes
 * as the scalar loop's stores; init[l] = -woff * sum of the row's values modulo 2**16, the sum taken exactly
 * by psadbw on the values offset by 128. Every word of gp (mp * lp) and init (lp) is written. */
__attribute__((target("avx2"))) static void bgrad_values_blocks_avx2(
        const int8_t *restrict g, int log, int64_t m, int64_t ho, int64_t wo, int64_t ws, int64_t lp,
        int8_t *restrict gp, int16_t *restrict init, int woff) {
    const __m128i table = _mm_loadu_si128((const __m128i *)LOG_VALUES), eight = _mm_set1_epi8(8);
    const __m128i bias = _mm_set1_epi8((char)0x80);
    uint16_t *restrict gp16 = (uint16_t *)gp;
    for (int64_t l0 = 0; l0 < lp; l0 += 8) {
        int32_t sum[8] = {0};
        for (int64_t q = 0; q < m; q += 16) {
            __m128i r[8];
            for (int i = 0; i < 8; ++i) {
                const int64_t l = l0 + i, oh = l / ws, ow = l % ws;
                r[i] = _mm_setzero_si128();
                if (oh < ho && ow < wo) {
                    const __m128i c = _mm_loadu_si128((const __m128i *)(g + (oh * wo + ow) * m + q));
                    r[i] = log ? _mm_shuffle_epi8(table, _mm_add_epi8(c, eight)) : c;
                    const __m128i sad = _mm_sad_epu8(_mm_xor_si128(r[i], bias), _mm_setzero_si128());
                    sum[i] += _mm_cvtsi128_si32(sad) + _mm_extract_epi16(sad, 4) - 16 * 128;
                }
            }
            transpose8_epi16(r);
            for (int p = 0; p < 8; ++p)
                _mm_storeu_si128((__m128i *)(gp16 + (q / 2 + p) * lp + l0), r[p]);
        }
        for (int i = 0; i < 8; ++i)
            init[l0 + i] = (int16_t)(uint16_t)((uint32_t)(-woff * sum[i]) & 0xFFFFu);
    }
}
#endif

/* bgrad_values_madd's work for one sample where bgrad_values_blocks_avx2 applies (returns 1), else 0 (the
 * caller runs bgrad_values_madd). Called only where the vpmaddubsw columns run (AVX2). */
static int bgrad_values_madd_blocks(const int8_t *g, int fmt, int32_t gmax, const int8_t *gs, int64_t m, int64_t ho,
                                    int64_t wo, int64_t ws, int64_t lp, int8_t *gp, int16_t *init, int woff) {
#if BG_MADD
    if (gs == NULL && m % 16 == 0 && lp % 8 == 0 && (fmt == 0 || (fmt == 1 && gmax <= 64))) {
        bgrad_values_blocks_avx2(g, fmt == 1, m, ho, wo, ws, lp, gp, init, woff);
        return 1;
    }
#else
    (void)g, (void)fmt, (void)gmax, (void)gs, (void)m, (void)ho, (void)wo, (void)ws, (void)lp, (void)gp, (void)init,
        (void)woff;
#endif
    return 0;
}

#ifdef __cplusplus
}
#endif
