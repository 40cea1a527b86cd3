/* Inner products of bnn.PackedMLP, for bnn/native.py (built on first use with the system C compiler).
 *
 * Bit i of a packed row is column i (1 for +1, 0 for -1), as written by bnn.packed.pack_bits.
 * bnn/native.py checks every buffer (dtype, shape, contiguity, device) before calling; the sizes
 * passed here are the sizes of those buffers.
 *
 * Both layers work on tiles of TILE_SAMPLES samples x TILE_OUTPUTS outputs, so every weight word
 * loaded is used for several samples, over chunks of CHUNK outputs whose weights stay in cache
 * while all samples pass. Outputs are split between `threads` POSIX threads in whole 64-bit words
 * of the result bits. With AVX-512 (and VPOPCNTDQ for the popcount) the tiles use intrinsics,
 * otherwise portable C (also forced with -DPACKED_PORTABLE, so it can be tested): the results
 * are the same bits.
 *
 * First layer (real inputs x, n of them): each output's sum of the x_i whose weight bit is set,
 * S1, is accumulated in float32 (16 lanes of masked adds, then a 4-level tree), and
 * a = 2 S1 - sum(x) in float64. This float32 value is only used where it is provably on the same
 * side of the threshold as the float64 sum: its error is at most `bound` (see sample_stats). The
 * rare neurons nearer to their threshold are recomputed in float64 (real_exact), which also gives
 * the pre-activations of a last layer.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(PACKED_PORTABLE) && defined(__AVX512F__)
#include <immintrin.h>
#define REAL_AVX512 1
#if defined(__AVX512VPOPCNTDQ__)
#define BINARY_AVX512 1
#endif
#endif

#define MAX_THREADS 64
#define TILE_SAMPLES 4
#define TILE_OUTPUTS 4
#define CHUNK 256
#define LANES 16 /* float32 inputs per masked add: 16 weight bits */
#ifndef REAL_AVX512
#define ROW_OUTPUTS TILE_OUTPUTS
#endif
#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 16")
/* An empty asm that "changes" v in a register of class c ("v": vector, "Yk": mask): the compiler then
 * loads each input once into its own register, instead of re-reading it from memory for every use or
 * funnelling all masks through one mask register. */
#define KEEP_IN_REGISTER(c, v) __asm__("" : "+" c(v))

typedef struct {
    const void *input;      /* first layer: float x[batch][n]; hidden: uint64 h[batch][cols] */
    const void *weight;     /* first layer: uint8 w[out][cols]; hidden: uint64 w[out][cols] */
    int64_t batch, n, out, cols; /* cols: bytes (first layer) or words (hidden) per weight row */
    const uint8_t *flip;    /* threshold and pack into bits: NULL to return the pre-activation */
    const void *threshold;  /* double (first layer) or int64 (hidden) */
    void *result;           /* bits: uint64 [batch][ceil(out/64)]; else double / int64 [batch][out] */
    int64_t begin, end;     /* outputs [begin, end) handled by this worker */
    const float *xs;        /* first layer: x with rows padded by zeros to `stride` floats */
    int64_t stride;
    const double *total, *bound; /* first layer, per sample: sum(x) and the float32 error bound */
} job_t;

typedef void tile_fn(const job_t *job, int64_t s, int samples, int64_t o, int outputs);

const char *real_layer_kind(void) {
#ifdef REAL_AVX512
    return "AVX-512 float32 masked adds, float64 near the threshold";
#else
    return "portable C float32 adds, float64 near the threshold";
#endif
}

const char *binary_layer_kind(void) {
#ifdef BINARY_AVX512
    return "AVX-512 VPOPCNTDQ XNOR-popcount";
#else
    return "portable C XNOR-popcount";
#endif
}

static inline void put_bit(uint64_t *row, int64_t o, int fires) {
    row[o >> 6] |= (uint64_t)(fires != 0) << (o & 63); /* no branch: whether a neuron fires is unpredictable */
}

/* Every tile of the worker's outputs: chunks of outputs, all samples per chunk; single samples (the
 * batch's remainder) in tiles of `row_outputs` outputs. */
static void for_each_tile(const job_t *job, tile_fn *tile, int row_outputs) {
    for (int64_t o0 = job->begin; o0 < job->end; o0 += CHUNK) {
        int64_t o1 = job->end - o0 > CHUNK ? o0 + CHUNK : job->end;
        for (int64_t s = 0; s < job->batch;) {
            int samples = job->batch - s >= TILE_SAMPLES ? TILE_SAMPLES : 1;
            int width = samples == TILE_SAMPLES ? TILE_OUTPUTS : row_outputs;
            for (int64_t o = o0; o < o1;) {
                int outputs = o1 - o >= width ? width : 1;
                tile(job, s, samples, o, outputs);
                o += outputs;
            }
            s += samples;
        }
    }
}

/* ---- first layer ------------------------------------------------------------------------------ */

/* a = sum_i (bit i ? x_i : -x_i) in float64, input order. */
static double real_exact(const job_t *job, int64_t s, int64_t o) {
    const float *x = job->xs + s * job->stride;
    const uint8_t *row = (const uint8_t *)job->weight + o * job->cols;
    double a = 0.0;
    for (int64_t i = 0; i < job->n; i++) a += (row[i >> 3] >> (i & 7) & 1) ? (double)x[i] : -(double)x[i];
    return a;
}

/* Weight bits of inputs 16 b ... 16 b + 15 of one row (the last block of an odd row has one byte). */
INLINE unsigned mask16(const uint8_t *row, int64_t b, int64_t bytes) {
    return row[2 * b] | (2 * b + 1 < bytes ? (unsigned)row[2 * b + 1] << 8 : 0);
}

#ifdef REAL_AVX512
#define ROW_OUTPUTS 16 /* outputs of one sample at a time: enough independent sums to keep the adders busy */

/* As real_sums for one sample and ROW_OUTPUTS outputs; sums[j]. */
static void real_row_sums(const job_t *job, int64_t s, int64_t o, float *sums) {
    const float *x = job->xs + s * job->stride;
    const uint8_t *w = (const uint8_t *)job->weight + o * job->cols;
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 acc[ROW_OUTPUTS];
    UNROLL
    for (int j = 0; j < ROW_OUTPUTS; j++) acc[j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < job->stride / LANES; b++) {
        __m512 xv = _mm512_load_ps(x + LANES * b);
        UNROLL
        for (int j = 0; j < ROW_OUTPUTS; j++) {
            __mmask16 k = (__mmask16)mask16(w + j * job->cols, b, job->cols);
            acc[j] = j % 2 ? _mm512_mask3_fmadd_ps(xv, one, acc[j], k) : _mm512_mask_add_ps(acc[j], k, acc[j], xv);
        }
    }
    UNROLL
    for (int j = 0; j < ROW_OUTPUTS; j++) sums[j] = _mm512_reduce_add_ps(acc[j]);
}

/* acc[i][j] += x_i where the bits of k[j] are set. Half the outputs use a multiply-add by 1 (the same
 * rounding as an add) so that CPUs with separate add and multiply-add units use both. */
INLINE void real_block(__m512 acc[TILE_SAMPLES][TILE_OUTPUTS], const float *x, int64_t stride, int64_t b,
                       const int samples, const int outputs, const __mmask16 *k) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 xv[TILE_SAMPLES];
    UNROLL
    for (int i = 0; i < samples; i++) {
        xv[i] = _mm512_load_ps(x + i * stride + LANES * b);
        KEEP_IN_REGISTER("v", xv[i]);
    }
    UNROLL
    for (int j = 0; j < outputs; j++)
        UNROLL
        for (int i = 0; i < samples; i++)
            acc[i][j] = j % 2 ? _mm512_mask3_fmadd_ps(xv[i], one, acc[i][j], k[j])
                              : _mm512_mask_add_ps(acc[i][j], k[j], acc[i][j], xv[i]);
}

/* Sums of the 16 vectors of a full tile, all through 4 levels of adds: lane 4 j + i holds acc[i][j]'s. */
INLINE __m512 real_reduce16(__m512 acc[TILE_SAMPLES][TILE_OUTPUTS]) {
    __m512 halves[8], quarters[4], eighths[2];
    UNROLL
    for (int t = 0; t < 8; t++) { /* 256-bit halves: [a0+a2, a1+a3 | b0+b2, b1+b3] in 128-bit chunks */
        __m512 a = acc[t / 2][2 * (t % 2)], b = acc[t / 2][2 * (t % 2) + 1];
        halves[t] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    }
    UNROLL
    for (int t = 0; t < 4; t++) /* 128-bit chunk c: one vector's partial sums */
        quarters[t] = _mm512_add_ps(_mm512_shuffle_f32x4(halves[2 * t], halves[2 * t + 1], 0x88),
                                    _mm512_shuffle_f32x4(halves[2 * t], halves[2 * t + 1], 0xDD));
    UNROLL
    for (int t = 0; t < 2; t++)
        eighths[t] = _mm512_add_ps(_mm512_shuffle_ps(quarters[2 * t], quarters[2 * t + 1], 0x44),
                                   _mm512_shuffle_ps(quarters[2 * t], quarters[2 * t + 1], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_ps(eighths[0], eighths[1], 0x88), _mm512_shuffle_ps(eighths[0], eighths[1], 0xDD));
}
#endif

/* S1 of `samples` x `outputs` (sample, output) pairs: float32 lanes of masked adds, then 4 levels of
 * adds; sums[i * TILE_OUTPUTS + j]. */
INLINE void real_sums(const job_t *job, int64_t s, const int samples, int64_t o, const int outputs, float *sums) {
    const float *x = job->xs + s * job->stride;
    const uint8_t *w = (const uint8_t *)job->weight + o * job->cols;
    int64_t bytes = job->cols, full = bytes / 2; /* blocks of 16 weight bits; an odd row ends in one byte */
#ifdef REAL_AVX512
    __m512 acc[TILE_SAMPLES][TILE_OUTPUTS];
    __mmask16 k[TILE_OUTPUTS];
    UNROLL
    for (int i = 0; i < samples; i++)
        UNROLL
        for (int j = 0; j < outputs; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < full; b++) {
        UNROLL
        for (int j = 0; j < outputs; j++) {
            memcpy(&k[j], w + j * bytes + 2 * b, 2);
            KEEP_IN_REGISTER("Yk", k[j]);
        }
        real_block(acc, x, job->stride, b, samples, outputs, k);
    }
    if (bytes % 2) {
        UNROLL
        for (int j = 0; j < outputs; j++) k[j] = w[j * bytes + 2 * full];
        real_block(acc, x, job->stride, full, samples, outputs, k);
    }
    if (samples == TILE_SAMPLES && outputs == TILE_OUTPUTS) {
        float lanes[LANES];
        _mm512_storeu_ps(lanes, real_reduce16(acc));
        UNROLL
        for (int i = 0; i < samples; i++)
            UNROLL
            for (int j = 0; j < outputs; j++) sums[i * TILE_OUTPUTS + j] = lanes[TILE_SAMPLES * j + i];
    } else {
        UNROLL
        for (int i = 0; i < samples; i++)
            UNROLL
            for (int j = 0; j < outputs; j++) sums[i * TILE_OUTPUTS + j] = _mm512_reduce_add_ps(acc[i][j]);
    }
#else
    float acc[TILE_SAMPLES][TILE_OUTPUTS][LANES] = {{{0}}};
    for (int64_t b = 0; b < (bytes + 1) / 2; b++)
        UNROLL
        for (int j = 0; j < outputs; j++) {
            unsigned k = mask16(w + j * bytes, b, bytes);
            UNROLL
            for (int i = 0; i < samples; i++)
                for (int l = 0; l < LANES; l++)
                    acc[i][j][l] += (k >> l & 1) ? x[i * job->stride + LANES * b + l] : 0.0f;
        }
    UNROLL
    for (int i = 0; i < samples; i++)
        UNROLL
        for (int j = 0; j < outputs; j++) {
            float *v = acc[i][j];
            for (int width = LANES / 2; width >= 1; width /= 2)
                for (int l = 0; l < width; l++) v[l] += v[l + width];
            sums[i * TILE_OUTPUTS + j] = v[0];
        }
#endif
}

/* Does output o of sample s fire? From the float32 sum where that is certain, else in float64. */
static inline int real_fires(const job_t *job, int64_t s, int64_t o, float sum) {
    double threshold = ((const double *)job->threshold)[o];
    double value = 2.0 * (double)sum - job->total[s];
    double gap = (job->flip[o] ? -value : value) - threshold;
    if (fabs(gap) > job->bound[s]) return gap > 0;
    double exact = real_exact(job, s, o);
    return (job->flip[o] ? -exact : exact) >= threshold;
}

/* Fire bits of `samples` x `outputs` pairs from their float32 sums (sums[i * width + j]). */
INLINE void real_emit(const job_t *job, int64_t s, const int samples, int64_t o, const int outputs, const float *sums,
                      const int width) {
    int64_t words_out = (job->out + 63) / 64;
    UNROLL
    for (int i = 0; i < samples; i++)
        UNROLL
        for (int j = 0; j < outputs; j++)
            put_bit((uint64_t *)job->result + (s + i) * words_out, o + j, real_fires(job, s + i, o + j, sums[i * width + j]));
}

INLINE void real_tile_of(const job_t *job, int64_t s, const int samples, int64_t o, const int outputs) {
    float sums[TILE_SAMPLES * TILE_OUTPUTS];
    real_sums(job, s, samples, o, outputs, sums);
    real_emit(job, s, samples, o, outputs, sums, TILE_OUTPUTS);
}

/* Constant tile sizes, so the accumulators stay in registers. */
static void real_tile(const job_t *job, int64_t s, int samples, int64_t o, int outputs) {
#ifdef REAL_AVX512
    if (samples == 1 && outputs == ROW_OUTPUTS) {
        float sums[ROW_OUTPUTS];
        real_row_sums(job, s, o, sums);
        real_emit(job, s, 1, o, ROW_OUTPUTS, sums, ROW_OUTPUTS);
        return;
    }
#endif
    if (samples == TILE_SAMPLES && outputs == TILE_OUTPUTS) real_tile_of(job, s, TILE_SAMPLES, o, TILE_OUTPUTS);
    else if (samples == TILE_SAMPLES) real_tile_of(job, s, TILE_SAMPLES, o, 1);
    else if (outputs == TILE_OUTPUTS) real_tile_of(job, s, 1, o, TILE_OUTPUTS);
    else real_tile_of(job, s, 1, o, 1);
}

static void *real_worker(void *arg) {
    const job_t *job = arg;
    if (job->flip != NULL) {
        for_each_tile(job, real_tile, ROW_OUTPUTS);
        return NULL;
    }
    for (int64_t s = 0; s < job->batch; s++)
        for (int64_t o = job->begin; o < job->end; o++)
            ((double *)job->result)[s * job->out + o] = real_exact(job, s, o);
    return NULL;
}

/* Per sample: sum(x), and the largest distance between a computed from the float32 S1 and the
 * float64 sum of real_exact. Float32 S1: each term goes through at most (blocks - 1) lane adds
 * and 4 tree adds, so |error| <= gamma(blocks + 3) * sum|x| with gamma(k) = k u / (1 - k u),
 * u = 2^-24, doubled in 2 S1; plus 2^-126 for each of those adds under flush-to-zero. The
 * float64 sums (total, 2 S1 - total, real_exact, the lane reduction) add at most (2n + 32) u64
 * sum|x|. The slack factor covers the rounding of the bound itself. Inputs whose float32 sums
 * could overflow get an infinite bound (always float64). Returns 2 if an input is NaN or infinite. */
static int sample_stats(const float *x, int64_t n, int64_t batch, int64_t stride, float *xs, double *total,
                        double *bound) {
    double blocks = (double)(stride / LANES), gamma = (blocks + 3) * 0x1p-24 / (1 - (blocks + 3) * 0x1p-24);
    for (int64_t s = 0; s < batch; s++) {
        const float *row = x + s * n;
        float *padded = xs + s * stride;
        double sum = 0.0, magnitude = 0.0;
        for (int64_t i = 0; i < n; i++) {
            padded[i] = row[i];
            sum += row[i];
            magnitude += fabs((double)row[i]);
        }
        for (int64_t i = n; i < stride; i++) padded[i] = 0.0f;
        if (!isfinite(magnitude)) return 2; /* sums of finite floats never overflow a double */
        total[s] = sum;
        int safe = magnitude < 0x1p120 && gamma > 0 && gamma < 1;
        bound[s] = safe ? (magnitude * (2 * gamma + (2.0 * (double)n + 32) * 0x1p-53) + (blocks + 4) * 0x1p-125)
                              * (1 + 0x1p-20)
                        : INFINITY;
    }
    return 0;
}

/* ---- hidden layers ---------------------------------------------------------------------------- */

#ifdef BINARY_AVX512
/* Sums of the 16 vectors of a full tile: lanes[8 (i / 2) + 2 j + i % 2] holds acc[i][j]'s. */
INLINE void binary_reduce16(__m512i acc[TILE_SAMPLES][TILE_OUTPUTS], int64_t *lanes) {
    __m512i halves[8], quarters[4];
    UNROLL
    for (int t = 0; t < 8; t++) { /* as in real_reduce16, on 64-bit lanes */
        __m512i a = acc[t / 2][2 * (t % 2)], b = acc[t / 2][2 * (t % 2) + 1];
        halves[t] = _mm512_add_epi64(_mm512_shuffle_i64x2(a, b, 0x44), _mm512_shuffle_i64x2(a, b, 0xEE));
    }
    UNROLL
    for (int t = 0; t < 4; t++) /* 128-bit chunk c: the two partial sums of acc[t][c] */
        quarters[t] = _mm512_add_epi64(_mm512_shuffle_i64x2(halves[2 * t], halves[2 * t + 1], 0x88),
                                       _mm512_shuffle_i64x2(halves[2 * t], halves[2 * t + 1], 0xDD));
    UNROLL
    for (int t = 0; t < 2; t++) /* lane 2 c + e: acc[2 t + e][c] */
        _mm512_storeu_si512(lanes + 8 * t, _mm512_add_epi64(_mm512_unpacklo_epi64(quarters[2 * t], quarters[2 * t + 1]),
                                                            _mm512_unpackhi_epi64(quarters[2 * t], quarters[2 * t + 1])));
}

/* acc[i][j] += popcount(h_i XOR w_j) for the words k ... k + 7 selected by `valid`. */
INLINE void binary_block(__m512i acc[TILE_SAMPLES][TILE_OUTPUTS], const uint64_t *h, const uint64_t *w, int64_t words,
                         int64_t k, __mmask8 valid, const int samples, const int outputs) {
    __m512i hv[TILE_SAMPLES];
    UNROLL
    for (int i = 0; i < samples; i++) {
        hv[i] = _mm512_maskz_loadu_epi64(valid, h + i * words + k);
        KEEP_IN_REGISTER("v", hv[i]);
    }
    UNROLL
    for (int j = 0; j < outputs; j++) {
        __m512i wv = _mm512_maskz_loadu_epi64(valid, w + j * words + k);
        UNROLL
        for (int i = 0; i < samples; i++)
            acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_xor_si512(hv[i], wv)));
    }
}
#endif

/* popcount(h XOR w) of `samples` x `outputs` pairs. */
INLINE void binary_counts(const job_t *job, int64_t s, const int samples, int64_t o, const int outputs,
                          int64_t *counts) {
    int64_t words = job->cols;
    const uint64_t *h = (const uint64_t *)job->input + s * words, *w = (const uint64_t *)job->weight + o * words;
#ifdef BINARY_AVX512
    __m512i acc[TILE_SAMPLES][TILE_OUTPUTS];
    UNROLL
    for (int i = 0; i < samples; i++)
        UNROLL
        for (int j = 0; j < outputs; j++) acc[i][j] = _mm512_setzero_si512();
    int64_t full = words / 8 * 8;
    for (int64_t k = 0; k < full; k += 8) binary_block(acc, h, w, words, k, 0xFF, samples, outputs);
    if (full < words) binary_block(acc, h, w, words, full, (__mmask8)((1u << (words - full)) - 1), samples, outputs);
    if (samples == TILE_SAMPLES && outputs == TILE_OUTPUTS) {
        int64_t lanes[2 * 8];
        binary_reduce16(acc, lanes);
        UNROLL
        for (int i = 0; i < samples; i++)
            UNROLL
            for (int j = 0; j < outputs; j++) counts[i * TILE_OUTPUTS + j] = lanes[8 * (i / 2) + 2 * j + i % 2];
    } else {
        UNROLL
        for (int i = 0; i < samples; i++)
            UNROLL
            for (int j = 0; j < outputs; j++) counts[i * TILE_OUTPUTS + j] = _mm512_reduce_add_epi64(acc[i][j]);
    }
#else
    UNROLL
    for (int i = 0; i < samples; i++)
        UNROLL
        for (int j = 0; j < outputs; j++) counts[i * TILE_OUTPUTS + j] = 0;
    for (int64_t k = 0; k < words; k++)
        UNROLL
        for (int j = 0; j < outputs; j++)
            UNROLL
            for (int i = 0; i < samples; i++)
                counts[i * TILE_OUTPUTS + j] += __builtin_popcountll(h[i * words + k] ^ w[j * words + k]);
#endif
}

INLINE void binary_tile_of(const job_t *job, int64_t s, const int samples, int64_t o, const int outputs) {
    int64_t counts[TILE_SAMPLES * TILE_OUTPUTS];
    binary_counts(job, s, samples, o, outputs, counts);
    int64_t words_out = (job->out + 63) / 64;
    UNROLL
    for (int i = 0; i < samples; i++)
        UNROLL
        for (int j = 0; j < outputs; j++) {
            int64_t a = job->n - 2 * counts[i * TILE_OUTPUTS + j];
            if (job->flip == NULL) {
                ((int64_t *)job->result)[(s + i) * job->out + o + j] = a;
            } else {
                int64_t value = job->flip[o + j] ? -a : a;
                put_bit((uint64_t *)job->result + (s + i) * words_out, o + j,
                        value >= ((const int64_t *)job->threshold)[o + j]);
            }
        }
}

static void binary_tile(const job_t *job, int64_t s, int samples, int64_t o, int outputs) {
    if (samples == TILE_SAMPLES && outputs == TILE_OUTPUTS) binary_tile_of(job, s, TILE_SAMPLES, o, TILE_OUTPUTS);
    else if (samples == TILE_SAMPLES) binary_tile_of(job, s, TILE_SAMPLES, o, 1);
    else if (outputs == TILE_OUTPUTS) binary_tile_of(job, s, 1, o, TILE_OUTPUTS);
    else binary_tile_of(job, s, 1, o, 1);
}

static void *binary_worker(void *arg) {
    for_each_tile(arg, binary_tile, TILE_OUTPUTS);
    return NULL;
}

/* ---- threads and entry points ----------------------------------------------------------------- */

/* Outputs are split into `threads` ranges of whole 64-bit words (so no two workers share a word). */
static void run(void *(*worker)(void *), job_t base, int threads) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    int64_t words_out = (base.out + 63) / 64;
    if (threads > words_out) threads = (int)words_out;
    job_t jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        jobs[t] = base;
        jobs[t].begin = 64 * (words_out * t / threads);
        int64_t end = 64 * (words_out * (t + 1) / threads);
        jobs[t].end = end < base.out ? end : base.out;
    }
    int started = 0;
    for (int t = 1; t < threads; t++) {
        if (pthread_create(&ids[t], NULL, worker, &jobs[t]) != 0) break;
        started = t;
    }
    for (int t = started + 1; t < threads; t++) worker(&jobs[t]); /* threads that could not start */
    worker(&jobs[0]);
    for (int t = 1; t <= started; t++) pthread_join(ids[t], NULL);
}

/* Returns 0; 1 when out of memory; 2 when an input is NaN or infinite (nothing is computed). */
int real_layer(const float *x, int64_t batch, int64_t n, const uint8_t *w, int64_t out, int64_t bytes,
               const uint8_t *flip, const double *threshold, void *result, int threads) {
    if (batch == 0) return 0;
    int64_t stride = LANES * ((n + LANES - 1) / LANES);
    float *xs = aligned_alloc(64, sizeof(float) * (size_t)(stride * batch)); /* a multiple of 64 bytes */
    double *stats = malloc(sizeof(double) * 2 * (size_t)batch);
    int status = xs == NULL || stats == NULL;
    if (status == 0) status = sample_stats(x, n, batch, stride, xs, stats, stats + batch);
    if (status == 0) {
        job_t job = {x, w, batch, n, out, bytes, flip, threshold, result, 0, out, xs, stride, stats, stats + batch};
        run(real_worker, job, threads);
    }
    free(xs);
    free(stats);
    return status;
}

int binary_layer(const uint64_t *h, int64_t batch, int64_t n, const uint64_t *w, int64_t out, int64_t words,
                 const uint8_t *flip, const int64_t *threshold, void *result, int threads) {
    job_t job = {h, w, batch, n, out, words, flip, threshold, result, 0, out, NULL, 0, NULL, NULL};
    run(binary_worker, job, threads);
    return 0;
}
