/* Inner products of bnn.PackedMLP, for bnn/native.py (built on first use with the system C compiler), and the
 * packing of +-1 floats into bits that lets a binary layer's training forward pass use the hidden-layer kernel
 * (bnn.binary_linear's "popcount" product).
 *
 * Bit i of a packed row is column i (1 for +1, 0 for -1), as written by bnn.packed.pack_bits.
 * bnn/native.py checks every buffer (dtype, shape, contiguity, device) before calling; the sizes
 * passed here are the sizes of those buffers.
 *
 * Both layers work on tiles of TILE_SAMPLES samples x TILE_BLOCKS vectors of outputs (one output
 * per lane), so every weight vector loaded is used for several samples, and the results of a
 * vector are thresholded and packed into bits at once. Outputs are split between `threads` threads in
 * whole 64-bit words of the result bits: torch's own OpenMP threads where bnn/native.py builds with -fopenmp
 * (torch runs GNU OpenMP), else a pool of POSIX threads kept between calls. With AVX-512 (F, BW, VL;
 * VPOPCNTDQ too for the hidden layers) the tiles use intrinsics, otherwise portable C (also forced with
 * -DPACKED_PORTABLE, so it can be tested), in tiles of a few samples x outputs so that each weight loaded serves several
 * samples, the first layer's by AVX2 permutes 8 outputs at a time where the CPU has AVX2: the results
 * are the same bits.
 *
 * Hidden layers: the AVX-512 kernel reads the weights word-major, w[k][o], so one vector holds word k
 * of 8 outputs; XOR with the sample's word k, popcount and add give 8 counts at once. The portable
 * kernel reads them output-major, w[o][k] (binary_layer_output_major() says which), so each output's
 * words are one stream: word-major rows lie 8 * out bytes apart, a stride no prefetcher follows
 * (1.4-1.6x slower at batch 1 and 64 on an AVX2 AMD EPYC). Where the CPU has AVX2 (and no VPOPCNTDQ) it counts
 * 4 words of an output at a time by nibble lookups; otherwise one word at a time.
 *
 * First layer (real inputs x, n of them): each output's sum of the x_i whose weight bit is set, S1,
 * is accumulated in float32 from per-sample tables of the 16 subset sums of each 4 inputs (16
 * outputs at a time: one permute looks up their entries), and a = 2 S1 - sum(x) in float64. This
 * value is only used where it is provably on the same side of the threshold as the float64 sum:
 * its error is at most `bound` (see sample_stats). The rare neurons nearer to their threshold are
 * recomputed in float64 (real_exact), which also gives the pre-activations of a last layer.
 */
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if !defined(PACKED_PORTABLE) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define REAL_AVX512 1
#if defined(__AVX512VPOPCNTDQ__)
#define BINARY_AVX512 1
#endif
#elif !defined(PACKED_PORTABLE) && defined(__AVX2__)
#include <immintrin.h>
#define REAL_AVX2 1 /* the portable first layer's tiles of 8 outputs by AVX2 permutes: the same float32 sums */
#endif
#if !defined(BINARY_AVX512) && !defined(PACKED_PORTABLE) && defined(__AVX2__)
#define BINARY_AVX2 1 /* the portable hidden layers' counts, 4 words at a time by AVX2 nibble lookups */
/* ... in rows of at least this many words: shorter ones pay more for the final byte sums than the lookups save (4-11
 * words, 256-704 inputs: 1.1-1.4x slower than scalar popcounts; 16 words 0.88x, 64 words 0.70x; AVX2-only Zen 3) */
#define AVX2_MIN_WORDS 16
#endif

#define MAX_THREADS 64
#define CHUNK 256 /* hidden layers: outputs whose weights stay in cache while every sample passes */
#define TILE_SAMPLES 4
#define TILE_BLOCKS 4 /* vectors of outputs per tile (16 outputs each in the first layer, 8 in hidden ones) */
#define INLINE static inline __attribute__((always_inline))
#define PORTABLE_OUTS 4  /* portable first layer: outputs per tile of 4 samples */
#define PORTABLE_OUTS_ONE_SAMPLE 8 /* ... and of one sample */
#define PORTABLE_WORDS 4 /* portable hidden layers: outputs per tile (times 2 samples) */
#define UNROLL _Pragma("GCC unroll 16")
/* An empty asm that "changes" the vector v in its register: the compiler then loads each tile input
 * once into a register of its own, instead of re-reading it from memory for every use. */
#define KEEP_IN_REGISTER(v) __asm__("" : "+v"(v))

typedef struct {
    const void *input;      /* first layer: float x[batch][n]; hidden: uint64 h[batch][cols] */
    const void *weight;     /* first layer: uint8 w[cols][out]; hidden: uint64 w[cols][out] (portable: w[out][cols]) */
    int64_t batch, n, out, cols; /* cols: groups of 8 inputs (first layer) or words (hidden) */
    const uint8_t *flip;    /* threshold and pack into bits: NULL to return the pre-activation */
    const void *threshold;  /* double (first layer) or int64 (hidden) */
    void *result;           /* bits: uint64 [batch][ceil(out/64)]; else double / int64 [batch][out] */
    int64_t begin, end;     /* outputs [begin, end) handled by this worker */
    const float *xs;        /* first layer: x with rows padded by zeros to `stride` = 8 cols floats */
    int64_t stride;
    const double *total, *bound; /* first layer, per sample: sum(x) and the float32 error bound */
    float *tables;          /* first layer: this worker's nibble tables of TILE_SAMPLES samples */
    int *bad;               /* pack_signs: set when a value is neither +1 nor -1 */
    int64_t row_stride, col_stride; /* signed_sums' tables: a[r][i] is a[r * row_stride + i * col_stride] */
    int accumulate, stream; /* signed_sums: add to the sums already in the result; write it around the caches */
} job_t;

const char *real_layer_kind(void) {
#if defined(REAL_AVX512)
    return "AVX-512 permutes of float32 nibble sums, float64 near the threshold";
#elif defined(REAL_AVX2)
    return "AVX2 permutes of float32 nibble sums, float64 near the threshold";
#else
    return "portable C float32 nibble sums, float64 near the threshold";
#endif
}

const char *threads_kind(void) {
#ifdef _OPENMP
    return "OpenMP (torch's threads)";
#else
    return "a pool of POSIX threads";
#endif
}

const char *binary_layer_kind(void) {
#ifdef BINARY_AVX512
    return "AVX-512 VPOPCNTDQ XNOR-popcount";
#elif defined(BINARY_AVX2)
    return "AVX2 nibble-lookup XNOR-popcount";
#else
    return "portable C XNOR-popcount";
#endif
}

/* 1 where binary_layer reads its weights output-major, w[out][cols]; 0 for word-major, w[cols][out]. */
int binary_layer_output_major(void) {
#ifdef BINARY_AVX512
    return 0;
#else
    return 1;
#endif
}

static inline void put_bit(uint64_t *row, int64_t o, int fires) {
    row[o >> 6] |= (uint64_t)(fires != 0) << (o & 63); /* no branch: whether a neuron fires is unpredictable */
}

/* ---- first layer ------------------------------------------------------------------------------ */

#define NIBBLE_TABLE 16 /* subset sums of 4 inputs */
#define BLOCK 16        /* outputs per vector: the lanes of the first layer's sums */

/* a = sum_i (bit i ? x_i : -x_i) in float64, input order. */
static double real_exact(const job_t *job, int64_t s, int64_t o) {
    const float *x = job->xs + s * job->stride;
    const uint8_t *w = job->weight;
    double a = 0.0;
    for (int64_t i = 0; i < job->n; i++)
        a += (w[(i >> 3) * job->out + o] >> (i & 7) & 1) ? (double)x[i] : -(double)x[i];
    return a;
}

/* Does output o of sample s fire, by the float64 sum? */
static int real_exact_fires(const job_t *job, int64_t s, int64_t o) {
    double exact = real_exact(job, s, o);
    return (job->flip[o] ? -exact : exact) >= ((const double *)job->threshold)[o];
}

/* For `samples` samples from s: tables[i][q][p] = sum of x_{4q+j} over the bits j of p, added in the
 * order j = 0, 1, 2, 3 (at most 3 roundings), for the 2 * groups nibbles q. */
static void build_tables(const job_t *job, int64_t s, int samples) {
    int64_t nibbles = 2 * job->cols;
    for (int i = 0; i < samples; i++) {
        const float *x = job->xs + (s + i) * job->stride;
        float *t = job->tables + i * nibbles * NIBBLE_TABLE;
        for (int64_t q = 0; q < nibbles; q++, t += NIBBLE_TABLE) {
#ifdef REAL_AVX512
            static const __mmask16 has_bit[4] = {0xAAAA, 0xCCCC, 0xF0F0, 0xFF00};
            __m512 sums = _mm512_setzero_ps();
            for (int j = 0; j < 4; j++) sums = _mm512_mask_add_ps(sums, has_bit[j], sums, _mm512_set1_ps(x[4 * q + j]));
            _mm512_store_ps(t, sums);
#else
            t[0] = 0.0f; /* entry (1 << j) | p, p < 2^j, adds x_j to entry p: the same sums in the same order */
            for (int j = 0; j < 4; j++)
                for (int p = 0; p < 1 << j; p++) t[1 << j | p] = t[p] + x[4 * q + j];
#endif
        }
    }
}

#ifdef REAL_AVX512
/* Fire bits of sample s and the `valid` ones of 16 outputs from o, from their float32 S1 (`sums`),
 * the outputs' flips and thresholds (two vectors of 8). */
static unsigned real_fires16(const job_t *job, int64_t s, int64_t o, __m512 sums, __mmask16 valid, __mmask16 flips,
                             const __m512d *thresholds) {
    const __m512d two = _mm512_set1_pd(2.0), total = _mm512_set1_pd(job->total[s]);
    const __m512d bound = _mm512_set1_pd(job->bound[s]), zero = _mm512_setzero_pd();
    __m256 halves[2] = {_mm512_castps512_ps256(sums),
                        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sums), 1))};
    unsigned fires = 0, unsure = 0;
    for (int h = 0; h < 2; h++) { /* 8 outputs at a time in float64, as real_fires */
        __mmask8 lanes = (__mmask8)(valid >> 8 * h), flipped = (__mmask8)(flips >> 8 * h);
        __m512d value = _mm512_fmsub_pd(two, _mm512_cvtps_pd(halves[h]), total); /* 2 S1 is exact: one rounding */
        value = _mm512_mask_sub_pd(value, flipped, zero, value);
        __m512d gap = _mm512_sub_pd(value, thresholds[h]);
        __mmask8 sure = _mm512_mask_cmp_pd_mask(lanes, _mm512_abs_pd(gap), bound, _CMP_GT_OQ);
        fires |= (unsigned)_mm512_mask_cmp_pd_mask(sure, gap, zero, _CMP_GT_OQ) << 8 * h;
        unsure |= (unsigned)(lanes & ~sure) << 8 * h;
    }
    for (; unsure; unsure &= unsure - 1) { /* near the threshold: the float64 sum decides */
        int lane = __builtin_ctz(unsure);
        fires |= (unsigned)real_exact_fires(job, s, o + lane) << lane;
    }
    return fires;
}

/* S1 of `samples` samples x `blocks` blocks of 16 outputs from o, one output per lane: for each byte
 * group g, acc += table[2g][low nibble] + table[2g + 1][high nibble], looked up with permutes. */
INLINE void real_tile_of(const job_t *job, int64_t s, const int samples, int64_t o, const int blocks) {
    int64_t nibbles = 2 * job->cols, left = job->end - o;
    const uint8_t *w = (const uint8_t *)job->weight + o;
    __mmask16 valid[TILE_BLOCKS];
    __m512 acc[TILE_SAMPLES][TILE_BLOCKS];
    UNROLL
    for (int j = 0; j < blocks; j++) {
        int64_t lanes = left - BLOCK * j; /* full tiles are full: a constant mask, plain loads */
        valid[j] = blocks == TILE_BLOCKS || lanes >= BLOCK ? 0xFFFF : (__mmask16)((1u << lanes) - 1);
        UNROLL
        for (int i = 0; i < samples; i++) acc[i][j] = _mm512_setzero_ps();
    }
    for (int64_t g = 0; g < job->cols; g++) {
        __m512 low[TILE_SAMPLES], high[TILE_SAMPLES];
        UNROLL
        for (int i = 0; i < samples; i++) {
            const float *t = job->tables + (i * nibbles + 2 * g) * NIBBLE_TABLE;
            low[i] = _mm512_load_ps(t);
            high[i] = _mm512_load_ps(t + NIBBLE_TABLE);
            KEEP_IN_REGISTER(low[i]);
            KEEP_IN_REGISTER(high[i]);
        }
        UNROLL
        for (int j = 0; j < blocks; j++) {
            __m512i index = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(valid[j], w + g * job->out + BLOCK * j));
            __m512i index_high = _mm512_srli_epi32(index, 4); /* permutes read the low 4 bits of each lane */
            UNROLL
            for (int i = 0; i < samples; i++)
                acc[i][j] = _mm512_add_ps(acc[i][j], _mm512_add_ps(_mm512_permutexvar_ps(index, low[i]),
                                                                   _mm512_permutexvar_ps(index_high, high[i])));
        }
    }
    __mmask16 flips[TILE_BLOCKS];
    __m512d thresholds[TILE_BLOCKS][2];
    UNROLL
    for (int j = 0; j < blocks; j++) {
        __m128i flip_bytes = _mm_maskz_loadu_epi8(valid[j], job->flip + o + BLOCK * j);
        flips[j] = _mm_test_epi8_mask(flip_bytes, flip_bytes);
        UNROLL
        for (int h = 0; h < 2; h++)
            thresholds[j][h] = _mm512_maskz_loadu_pd((__mmask8)(valid[j] >> 8 * h),
                                                     (const double *)job->threshold + o + BLOCK * j + 8 * h);
    }
    int64_t words_out = (job->out + 63) / 64;
    UNROLL
    for (int i = 0; i < samples; i++) {
        uint64_t bits = 0; /* o is a multiple of 64 (full tiles) or 16 */
        UNROLL
        for (int j = 0; j < blocks; j++)
            bits |= (uint64_t)real_fires16(job, s + i, o + BLOCK * j, acc[i][j], valid[j], flips[j], thresholds[j])
                    << BLOCK * j;
        ((uint64_t *)job->result)[(s + i) * words_out + (o >> 6)] |= bits << (o & 63);
    }
}
#else
/* As real_emit16 for one output: from `sum` where the float32 error bound allows, else float64. */
static int real_fires(const job_t *job, int64_t s, int64_t o, float sum) {
    double value = 2.0 * (double)sum - job->total[s];
    double gap = (job->flip[o] ? -value : value) - ((const double *)job->threshold)[o];
    return fabs(gap) > job->bound[s] ? gap > 0 : real_exact_fires(job, s, o);
}

/* The `outs` (at most 8) bytes at p, byte k in bits 8k..8k+7: one load where the machine is little-endian. */
INLINE uint64_t weight_bytes(const uint8_t *p, const int outs) {
    uint64_t bytes = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(&bytes, p, (size_t)outs);
#else
    for (int k = 0; k < outs; k++) bytes |= (uint64_t)p[k] << 8 * k;
#endif
    return bytes;
}

/* S1 of `samples` samples x `outs` outputs from o, in the AVX-512 tile's order (per output, group by group:
 * acc += low + high, so the same float32 sums): the tile's weight bytes of a group are one load, serving every
 * sample of the tile, and constant tile sizes keep the sums in registers. */
INLINE void real_outputs(const job_t *job, int64_t s, const int samples, int64_t o, const int outs) {
    int64_t nibbles = 2 * job->cols, words_out = (job->out + 63) / 64;
    const uint8_t *w = (const uint8_t *)job->weight + o;
    float acc[TILE_SAMPLES][PORTABLE_OUTS_ONE_SAMPLE] = {{0}};
    for (int64_t g = 0; g < job->cols; g++) {
        uint64_t bytes = weight_bytes(w + g * job->out, outs);
        UNROLL
        for (int i = 0; i < samples; i++) {
            const float *low = job->tables + (i * nibbles + 2 * g) * NIBBLE_TABLE, *high = low + NIBBLE_TABLE;
            UNROLL
            for (int k = 0; k < outs; k++) acc[i][k] += low[bytes >> 8 * k & 15] + high[bytes >> (8 * k + 4) & 15];
        }
    }
    for (int i = 0; i < samples; i++)
        for (int k = 0; k < outs; k++)
            put_bit((uint64_t *)job->result + (s + i) * words_out, o + k, real_fires(job, s + i, o + k, acc[i][k]));
}

#ifdef REAL_AVX2
/* Entry `index & 15` of the 16-float table t in each lane: two 8-entry permutes (which read the index's low 3 bits),
 * the one of bit 3 taken (a blend reads each lane's sign bit, where the shift puts bit 3). */
INLINE __m256 table16(const float *t, __m256i index) {
    __m256 first = _mm256_permutevar8x32_ps(_mm256_loadu_ps(t), index);
    __m256 second = _mm256_permutevar8x32_ps(_mm256_loadu_ps(t + 8), index);
    return _mm256_blendv_ps(first, second, _mm256_castsi256_ps(_mm256_slli_epi32(index, 28)));
}

/* real_outputs of 8 outputs from o, one per lane: per lane acc += low + high, group by group, so the same float32
 * sums in the same order (the same bits as the portable C and the AVX-512 tiles); the 8 weight bytes of a group are
 * one load, serving every sample. About 3x faster than the scalar lookups on an AVX2-only AMD EPYC Zen 3. */
INLINE void real_outputs8(const job_t *job, int64_t s, const int samples, int64_t o) {
    int64_t nibbles = 2 * job->cols, words_out = (job->out + 63) / 64;
    const uint8_t *w = (const uint8_t *)job->weight + o;
    __m256 acc[TILE_SAMPLES];
    UNROLL
    for (int i = 0; i < samples; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < job->cols; g++) {
        __m256i index = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(w + g * job->out)));
        __m256i index_high = _mm256_srli_epi32(index, 4);
        UNROLL
        for (int i = 0; i < samples; i++) {
            const float *low = job->tables + (i * nibbles + 2 * g) * NIBBLE_TABLE;
            acc[i] = _mm256_add_ps(acc[i], _mm256_add_ps(table16(low, index), table16(low + NIBBLE_TABLE, index_high)));
        }
    }
    for (int i = 0; i < samples; i++) {
        float sums[8];
        _mm256_storeu_ps(sums, acc[i]);
        for (int k = 0; k < 8; k++)
            put_bit((uint64_t *)job->result + (s + i) * words_out, o + k, real_fires(job, s + i, o + k, sums[k]));
    }
}
#endif

/* As the AVX-512 tile, a few outputs at a time: more for one sample, whose sums leave registers free. */
INLINE void real_tile_of(const job_t *job, int64_t s, const int samples, int64_t o, const int blocks) {
    int64_t last = o + BLOCK * blocks < job->end ? o + BLOCK * blocks : job->end;
    const int outs = samples == 1 ? PORTABLE_OUTS_ONE_SAMPLE : PORTABLE_OUTS;
#ifdef REAL_AVX2
    for (; last - o >= 8; o += 8) real_outputs8(job, s, samples, o);
#endif
    for (; last - o >= outs; o += outs) real_outputs(job, s, samples, o, outs);
    for (; o < last; o++) real_outputs(job, s, samples, o, 1);
}
#endif

/* Constant tile sizes, so the accumulators stay in registers. */
static void real_tile(const job_t *job, int64_t s, int samples, int64_t o, int blocks) {
    if (samples == TILE_SAMPLES && blocks == TILE_BLOCKS) real_tile_of(job, s, TILE_SAMPLES, o, TILE_BLOCKS);
    else if (samples == TILE_SAMPLES) real_tile_of(job, s, TILE_SAMPLES, o, 1);
    else if (blocks == TILE_BLOCKS) real_tile_of(job, s, 1, o, TILE_BLOCKS);
    else real_tile_of(job, s, 1, o, 1);
}

static void *real_worker(void *arg) {
    const job_t *job = arg;
    if (job->flip == NULL) {
        for (int64_t s = 0; s < job->batch; s++)
            for (int64_t o = job->begin; o < job->end; o++)
                ((double *)job->result)[s * job->out + o] = real_exact(job, s, o);
        return NULL;
    }
    for (int64_t s = 0; s < job->batch;) { /* the tables of a few samples, then every output for them */
        int samples = job->batch - s >= TILE_SAMPLES ? TILE_SAMPLES : 1;
        build_tables(job, s, samples);
        for (int64_t o = job->begin; o < job->end;) {
            int blocks = job->end - o >= BLOCK * TILE_BLOCKS ? TILE_BLOCKS : 1;
            real_tile(job, s, samples, o, blocks);
            o += BLOCK * blocks;
        }
        s += samples;
    }
    return NULL;
}

/* Per sample: sum(x), and the largest distance between a computed from the float32 S1 and the
 * float64 sum of real_exact. Float32 S1: each term goes through at most 3 table adds, 1 pair add
 * and groups - 1 accumulating adds, so |error| <= gamma(groups + 3) * sum|x| with
 * gamma(k) = k u / (1 - k u), u = 2^-24, doubled in 2 S1; plus 2^-126 for each of the (at most
 * 8 groups) adds if results are flushed to zero. The float64 sums (total, 2 S1 - total, real_exact)
 * add less than (2n + 32) u64 sum|x|. The slack factor covers the rounding of the bound itself.
 * Inputs whose float32 sums could overflow get an infinite bound (always float64). Returns 2 if an
 * input is NaN or infinite. */
static int sample_stats(const float *x, int64_t n, int64_t batch, int64_t stride, float *xs, double *total,
                        double *bound) {
    double groups = (double)((n + 7) / 8), gamma = (groups + 3) * 0x1p-24 / (1 - (groups + 3) * 0x1p-24);
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
        bound[s] = safe ? (magnitude * (2 * gamma + (2.0 * (double)n + 32) * 0x1p-53) + (groups + 1) * 0x1p-121)
                              * (1 + 0x1p-20)
                        : INFINITY;
    }
    return 0;
}

/* ---- hidden layers ---------------------------------------------------------------------------- */

#define WORD_LANES 8 /* outputs per vector: the lanes of the hidden layers' counts */

#ifdef BINARY_AVX512
/* popcount(h_i XOR w) of `samples` samples x `blocks` vectors of 8 outputs from o, one output per
 * lane: the weights are stored word-major, w[k][o], so each word of a sample meets 8 outputs. */
INLINE void binary_tile_of(const job_t *job, int64_t s, const int samples, int64_t o, const int blocks) {
    const uint64_t *h = (const uint64_t *)job->input + s * job->cols, *w = (const uint64_t *)job->weight + o;
    int64_t left = job->end - o;
    __mmask8 valid[TILE_BLOCKS];
    __m512i acc[TILE_SAMPLES][TILE_BLOCKS];
    UNROLL
    for (int j = 0; j < blocks; j++) {
        int64_t lanes = left - WORD_LANES * j; /* full tiles are full: a constant mask, plain loads */
        valid[j] = blocks == TILE_BLOCKS || lanes >= WORD_LANES ? 0xFF : (__mmask8)((1u << lanes) - 1);
        UNROLL
        for (int i = 0; i < samples; i++) acc[i][j] = _mm512_setzero_si512();
    }
    for (int64_t k = 0; k < job->cols; k++) {
        __m512i wv[TILE_BLOCKS];
        UNROLL
        for (int j = 0; j < blocks; j++) {
            wv[j] = _mm512_maskz_loadu_epi64(valid[j], w + k * job->out + WORD_LANES * j);
            KEEP_IN_REGISTER(wv[j]);
        }
        UNROLL
        for (int i = 0; i < samples; i++) {
            __m512i hv = _mm512_set1_epi64((int64_t)h[i * job->cols + k]);
            UNROLL
            for (int j = 0; j < blocks; j++)
                acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_xor_si512(hv, wv[j])));
        }
    }
    const __m512i n = _mm512_set1_epi64(job->n);
    if (job->flip == NULL) { /* pre-activations a = n - 2 count */
        UNROLL
        for (int i = 0; i < samples; i++)
            UNROLL
            for (int j = 0; j < blocks; j++)
                _mm512_mask_storeu_epi64((int64_t *)job->result + (s + i) * job->out + o + WORD_LANES * j, valid[j],
                                         _mm512_sub_epi64(n, _mm512_slli_epi64(acc[i][j], 1)));
        return;
    }
    __mmask8 flips[TILE_BLOCKS];
    __m512i thresholds[TILE_BLOCKS];
    UNROLL
    for (int j = 0; j < blocks; j++) {
        __m128i flip_bytes = _mm_maskz_loadu_epi8(valid[j], job->flip + o + WORD_LANES * j);
        flips[j] = _mm_test_epi8_mask(flip_bytes, flip_bytes);
        thresholds[j] = _mm512_maskz_loadu_epi64(valid[j], (const int64_t *)job->threshold + o + WORD_LANES * j);
    }
    int64_t words_out = (job->out + 63) / 64;
    UNROLL
    for (int i = 0; i < samples; i++) {
        uint64_t bits = 0; /* o is a multiple of 32 (full tiles) or 8 */
        UNROLL
        for (int j = 0; j < blocks; j++) {
            __m512i a = _mm512_sub_epi64(n, _mm512_slli_epi64(acc[i][j], 1));
            a = _mm512_mask_sub_epi64(a, flips[j], _mm512_setzero_si512(), a);
            bits |= (uint64_t)_mm512_mask_cmpge_epi64_mask(valid[j], a, thresholds[j]) << WORD_LANES * j;
        }
        ((uint64_t *)job->result)[(s + i) * words_out + (o >> 6)] |= bits << (o & 63);
    }
}
#else
/* Writes the pre-activation a = n - 2 count of sample s, output o, or its fire bit. */
static void binary_put(const job_t *job, int64_t s, int64_t o, int64_t count) {
    int64_t a = job->n - 2 * count;
    if (job->flip == NULL) {
        ((int64_t *)job->result)[s * job->out + o] = a;
    } else {
        int64_t value = job->flip[o] ? -a : a;
        put_bit((uint64_t *)job->result + s * ((job->out + 63) / 64), o, value >= ((const int64_t *)job->threshold)[o]);
    }
}

/* Counts of `samples` (at most 2) samples x `outs` outputs from o, weights output-major: each weight word
 * loaded serves every sample, and constant tile sizes keep the counts in general registers (x86-64 has 16). */
INLINE void binary_outputs(const job_t *job, int64_t s, const int samples, int64_t o, const int outs) {
    const uint64_t *h = (const uint64_t *)job->input + s * job->cols;
    const uint64_t *w = (const uint64_t *)job->weight + o * job->cols;
    int64_t count[2][PORTABLE_WORDS] = {{0}};
    for (int64_t word = 0; word < job->cols; word++) {
        UNROLL
        for (int i = 0; i < samples; i++) {
            uint64_t x = h[i * job->cols + word];
            UNROLL
            for (int k = 0; k < outs; k++) count[i][k] += __builtin_popcountll(x ^ w[k * job->cols + word]);
        }
    }
    for (int i = 0; i < samples; i++)
        for (int k = 0; k < outs; k++) binary_put(job, s + i, o + k, count[i][k]);
}

#ifdef BINARY_AVX2
/* binary_outputs for rows of AVX2_MIN_WORDS words or more (a function of its own: sharing one with the scalar loop made
 * that loop 8-15 % slower on short rows) */
INLINE void binary_outputs_wide(const job_t *job, int64_t s, const int samples, int64_t o, const int outs) {
    const uint64_t *h = (const uint64_t *)job->input + s * job->cols;
    const uint64_t *w = (const uint64_t *)job->weight + o * job->cols;
    int64_t count[2][PORTABLE_WORDS] = {{0}};
    int64_t word = 0;
    /* 4 words of each output at a time: the bit counts of their bytes by two 16-entry lookups (one per nibble), added
     * up bytewise for at most 31 steps (a byte's count is at most 8: 248 < 256), then summed by vpsadbw; the counts
     * are the scalar loop's (4096 x 4096, one thread, an AVX2-only AMD EPYC Zen 3: 89 against 141 us at batch 1,
     * 3.8 against 5.4 ms at batch 64) */
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    while (word + 4 <= job->cols) {
        int64_t steps = (job->cols - word) / 4 < 31 ? (job->cols - word) / 4 : 31;
        __m256i bytes[2][PORTABLE_WORDS];
        UNROLL
        for (int i = 0; i < samples; i++)
            UNROLL
            for (int k = 0; k < outs; k++) bytes[i][k] = _mm256_setzero_si256();
        for (int64_t step = 0; step < steps; step++, word += 4) {
            __m256i x[2];
            UNROLL
            for (int i = 0; i < samples; i++) x[i] = _mm256_loadu_si256((const __m256i *)(h + i * job->cols + word));
            UNROLL
            for (int k = 0; k < outs; k++) {
                __m256i wv = _mm256_loadu_si256((const __m256i *)(w + k * job->cols + word));
                UNROLL
                for (int i = 0; i < samples; i++) {
                    __m256i d = _mm256_xor_si256(x[i], wv);
                    __m256i low = _mm256_shuffle_epi8(table, _mm256_and_si256(d, nibble));
                    __m256i high = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(d, 4), nibble));
                    bytes[i][k] = _mm256_add_epi8(bytes[i][k], _mm256_add_epi8(low, high));
                }
            }
        }
        UNROLL
        for (int i = 0; i < samples; i++)
            UNROLL
            for (int k = 0; k < outs; k++) {
                int64_t lanes[4];
                _mm256_storeu_si256((__m256i *)lanes, _mm256_sad_epu8(bytes[i][k], _mm256_setzero_si256()));
                count[i][k] += lanes[0] + lanes[1] + lanes[2] + lanes[3];
            }
    }
    for (; word < job->cols; word++) {
        UNROLL
        for (int i = 0; i < samples; i++) {
            uint64_t x = h[i * job->cols + word];
            UNROLL
            for (int k = 0; k < outs; k++) count[i][k] += __builtin_popcountll(x ^ w[k * job->cols + word]);
        }
    }
    for (int i = 0; i < samples; i++)
        for (int k = 0; k < outs; k++) binary_put(job, s + i, o + k, count[i][k]);
}
#endif

INLINE void binary_outputs_to(const job_t *job, int64_t s, const int samples, int64_t o, int64_t last) {
#ifdef BINARY_AVX2
    if (job->cols >= AVX2_MIN_WORDS) {
        for (; last - o >= PORTABLE_WORDS; o += PORTABLE_WORDS) binary_outputs_wide(job, s, samples, o, PORTABLE_WORDS);
        for (; o < last; o++) binary_outputs_wide(job, s, samples, o, 1);
        return;
    }
#endif
    for (; last - o >= PORTABLE_WORDS; o += PORTABLE_WORDS) binary_outputs(job, s, samples, o, PORTABLE_WORDS);
    for (; o < last; o++) binary_outputs(job, s, samples, o, 1);
}

/* As the AVX-512 tile: pairs of samples (a constant count each, so the counts stay in registers). */
INLINE void binary_tile_of(const job_t *job, int64_t s, const int samples, int64_t o, const int blocks) {
    int64_t last = o + WORD_LANES * blocks < job->end ? o + WORD_LANES * blocks : job->end;
    for (int i = 0; i < samples; i += 2) {
        if (samples - i >= 2) binary_outputs_to(job, s + i, 2, o, last);
        else binary_outputs_to(job, s + i, 1, o, last);
    }
}
#endif

static void binary_tile(const job_t *job, int64_t s, int samples, int64_t o, int blocks) {
    if (samples == TILE_SAMPLES && blocks == TILE_BLOCKS) binary_tile_of(job, s, TILE_SAMPLES, o, TILE_BLOCKS);
    else if (samples == TILE_SAMPLES) binary_tile_of(job, s, TILE_SAMPLES, o, 1);
    else if (blocks == TILE_BLOCKS) binary_tile_of(job, s, 1, o, TILE_BLOCKS);
    else binary_tile_of(job, s, 1, o, 1);
}

/* Chunks of outputs; for each, every sample (so the chunk's weights stay in cache). */
static void *binary_worker(void *arg) {
    const job_t *job = arg;
    for (int64_t o0 = job->begin; o0 < job->end; o0 += CHUNK) {
        int64_t o1 = job->end - o0 > CHUNK ? o0 + CHUNK : job->end;
        for (int64_t s = 0; s < job->batch;) {
            int samples = job->batch - s >= TILE_SAMPLES ? TILE_SAMPLES : 1;
            for (int64_t o = o0; o < o1;) {
                int blocks = o1 - o >= WORD_LANES * TILE_BLOCKS ? TILE_BLOCKS : 1;
                binary_tile(job, s, samples, o, blocks);
                o += WORD_LANES * blocks;
            }
            s += samples;
        }
    }
    return NULL;
}

/* ---- +-1 floats to bits (bnn.binary_linear's popcount product in training) ---------------------- */

/* The bits of `count` (at most 64) int8 values, bit j for value j: 1 for +1, 0 for -1; sets *bad when a value is
 * neither. */
static uint64_t int8_sign_word(const int8_t *v, int64_t count, int *bad) {
    uint64_t word = 0;
    int64_t j = 0;
#if defined(REAL_AVX512)
    if (count == 64) {
        __m512i x = _mm512_loadu_si512(v);
        word = _mm512_cmpeq_epi8_mask(x, _mm512_set1_epi8(1));
        *bad |= (word | _mm512_cmpeq_epi8_mask(x, _mm512_set1_epi8(-1))) != ~(uint64_t)0;
        return word;
    }
#endif
#if (defined(REAL_AVX512) || defined(REAL_AVX2)) && defined(__AVX2__)
    const __m256i one = _mm256_set1_epi8(1), minus = _mm256_set1_epi8(-1);
    for (; j + 32 <= count; j += 32) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(v + j));
        uint64_t positive = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(x, one));
        uint32_t unit = (uint32_t)_mm256_movemask_epi8(_mm256_or_si256(_mm256_cmpeq_epi8(x, one),
                                                                       _mm256_cmpeq_epi8(x, minus)));
        word |= positive << j;
        *bad |= unit != 0xFFFFFFFFu;
    }
#endif
    for (; j < count; j++) {
        word |= (uint64_t)(v[j] == 1) << j;
        *bad |= v[j] != 1 && v[j] != -1;
    }
    return word;
}

/* As int8_sign_word for floats: 1 for +1.0, 0 for -1.0; sets *bad for anything else (NaN included). */
static uint64_t float_sign_word(const float *v, int64_t count, int *bad) {
    uint64_t word = 0;
    int64_t j = 0;
#if (defined(REAL_AVX512) || defined(REAL_AVX2)) && defined(__AVX2__)
    const __m256 one = _mm256_set1_ps(1.0f), magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (; j + 8 <= count; j += 8) {
        __m256 x = _mm256_loadu_ps(v + j);
        uint64_t positive = (uint64_t)_mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ));
        int unit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(x, magnitude), one, _CMP_EQ_OQ));
        word |= positive << j;
        *bad |= unit != 0xFF;
    }
#endif
    for (; j < count; j++) {
        word |= (uint64_t)(v[j] > 0.0f) << j;
        *bad |= v[j] != 1.0f && v[j] != -1.0f;
    }
    return word;
}

/* Rows [begin, end) of the float rows job->input ([out][n]; int8 where job->stride is 1) into job->result ([out][cols]
 * words), bit j of word w for column 64 w + j: 1 for +1, 0 for -1 (bnn.packed.pack_bits' layout). Sets *job->bad when
 * a value is neither +1 nor -1 (NaN included), so the caller can take another product. */
static void *pack_worker(void *arg) {
    const job_t *job = arg;
    int bad = 0, int8 = job->stride == 1;
    for (int64_t r = job->begin; r < job->end; r++) {
        const float *row = (const float *)job->input + r * job->n;
        const int8_t *row8 = (const int8_t *)job->input + r * job->n;
        uint64_t *words = (uint64_t *)job->result + r * job->cols;
        for (int64_t w = 0; w < job->cols; w++) {
            int64_t count = job->n - 64 * w < 64 ? job->n - 64 * w : 64;
            words[w] = int8 ? int8_sign_word(row8 + 64 * w, count, &bad) : float_sign_word(row + 64 * w, count, &bad);
        }
    }
    if (bad) __atomic_store_n(job->bad, 1, __ATOMIC_RELAXED);
    return NULL;
}

/* ---- the signs of hidden weights as int8 (the sign buffers of bnn.sign_buffers) ----------------- */

/* Values [begin, end) of the floats job->input as int8 signs in job->result: -1 below 0, else +1 (0, -0.0 and NaN give
 * +1, as metaspike.quantizers.binary_sign does on CPUs). */
static void *int8_signs_worker(void *arg) {
    const job_t *job = arg;
    const float *restrict w = job->input;
    int8_t *restrict signs = job->result; /* (restrict, and the end read once: an int8 store may alias anything) */
    int64_t i = job->begin, end = job->end;
#if defined(REAL_AVX512)
    const __m128i plus = _mm_set1_epi8(1), minus = _mm_set1_epi8(-1);
    for (; i + 16 <= job->end; i += 16) {
        __mmask16 negative = _mm512_cmp_ps_mask(_mm512_loadu_ps(w + i), _mm512_setzero_ps(), _CMP_LT_OQ);
        _mm_storeu_si128((__m128i *)(signs + i), _mm_mask_blend_epi8(negative, plus, minus));
    }
#endif
    /* branch-free, so the compiler vectorises it: as a branch on each weight's sign, a step's random signs were
     * mispredicted half the time (5.3 ms for 2^20 weights on an AVX2-only AMD EPYC Zen 3, one thread) */
    for (; i < end; i++) signs[i] = (int8_t)(1 - 2 * (w[i] < 0.0f));
    return NULL;
}

/* ---- signed sums: a real matrix times a +-1 matrix (the backward products of training) --------------
 *
 * c = a @ s for real a ([m][k], any strides) and s ([k][n], each +1 or -1), as the float32 sums of subset-sum
 * tables: for each row of a and group q of SIGN_GROUP = 5 of its k entries, the 32 sums
 * sum_i (bit i of p ? +1 : -1) a[5q+i] (p = 0..31, added in the order i = 0..4), and for each column of s the group's
 * 5 signs as a code p (bit i set for +1 in row 5q+i; rows past k count as zeros of a). c[r][j] = sum over q of
 * table[r][q][code[q][j]], added in the order q = 0, 1, ...: the same float32 sums on every path (AVX-512 looks up
 * 16 columns with one two-table permute; portable C one at a time). Each product a[r][i]*s[i][j] is exact, so the
 * result differs from a float32 matrix product only in the order of its additions. Groups of 5 (32-entry tables in
 * two vectors) ran 1.5x faster than groups of 4 (16 entries, one vector) on an AMD EPYC Zen 4, one thread. */

#define SIGN_GROUP 5
#define SIGN_TABLE 32 /* 2^SIGN_GROUP */
#define SIGNED_ROWS 4 /* rows of a per AVX-512 tile */
#define SIGNED_VECS 4 /* vectors of 16 columns per AVX-512 tile */

const char *signed_sums_kind(void) {
#if defined(REAL_AVX512)
    return "AVX-512 two-table permutes of float32 sums of 5 signed terms";
#else
    return "portable C float32 sums of 5 signed terms";
#endif
}

/* Rows [begin, end) of the tables of job->input = a ([m][k], k = job->n, strides job->row_stride and job->col_stride)
 * into job->result: tables[r][q][p] = sum_i (bit i of p ? +1 : -1) a[r][5q+i], added in the order i = 0..4 (entries
 * past k: 0). A fused multiply-add by +-1 rounds as the addition does, so both paths give the same tables. */
static void *signed_tables_worker(void *arg) {
    const job_t *job = arg;
    const float *a = job->input;
    int64_t k = job->n, groups = job->cols;
#if defined(REAL_AVX512)
    __m512 sign[SIGN_GROUP][2];
    for (int i = 0; i < SIGN_GROUP; i++)
        for (int half = 0; half < 2; half++) {
            float p[16];
            for (int e = 0; e < 16; e++) p[e] = ((16 * half + e) >> i & 1) ? 1.0f : -1.0f;
            sign[i][half] = _mm512_loadu_ps(p);
        }
#endif
    for (int64_t r = job->begin; r < job->end; r++) {
        float *t = (float *)job->result + r * groups * SIGN_TABLE;
        for (int64_t q = 0; q < groups; q++, t += SIGN_TABLE) {
            float x[SIGN_GROUP];
            for (int i = 0; i < SIGN_GROUP; i++) {
                int64_t at = SIGN_GROUP * q + i;
                x[i] = at < k ? a[r * job->row_stride + at * job->col_stride] : 0.0f;
            }
#if defined(REAL_AVX512)
            for (int half = 0; half < 2; half++) {
                __m512 sum = _mm512_mul_ps(_mm512_set1_ps(x[0]), sign[0][half]);
                for (int i = 1; i < SIGN_GROUP; i++) sum = _mm512_fmadd_ps(_mm512_set1_ps(x[i]), sign[i][half], sum);
                _mm512_store_ps(t + 16 * half, sum);
            }
#else
            for (int p = 0; p < SIGN_TABLE; p++) {
                float sum = (p & 1) ? x[0] : -x[0];
                for (int i = 1; i < SIGN_GROUP; i++) sum += (p >> i & 1) ? x[i] : -x[i];
                t[p] = sum;
            }
#endif
        }
    }
    return NULL;
}

/* job->input: the tables (float [m][groups][32]); job->weight: the codes (uint8 [groups][n]); job->batch = m,
 * job->cols = groups, job->out = n; columns [begin, end) of job->result (float [m][n]), the sums started from the
 * result's own values where job->accumulate (a later block of groups: the same additions, in the same order). */
static void *signed_sums_worker(void *arg) {
    const job_t *job = arg;
    const float *tables = job->input;
    const uint8_t *codes = job->weight;
    float *c = job->result;
    int64_t m = job->batch, groups = job->cols, n = job->out;
#if defined(REAL_AVX512)
    for (int64_t r = 0; r < m; r += SIGNED_ROWS) {
        int rows = m - r < SIGNED_ROWS ? (int)(m - r) : SIGNED_ROWS;
        const float *t[SIGNED_ROWS];
        for (int i = 0; i < SIGNED_ROWS; i++) t[i] = tables + (r + (i < rows ? i : 0)) * groups * SIGN_TABLE;
        int64_t j = job->begin;
        for (; j + 16 * SIGNED_VECS <= job->end; j += 16 * SIGNED_VECS) {
            __m512 acc[SIGNED_ROWS][SIGNED_VECS];
            UNROLL for (int i = 0; i < SIGNED_ROWS; i++)
                UNROLL for (int b = 0; b < SIGNED_VECS; b++)
                    acc[i][b] = job->accumulate && i < rows ? _mm512_loadu_ps(c + (r + i) * n + j + 16 * b)
                                                             : _mm512_setzero_ps();
            const uint8_t *code = codes + j;
            for (int64_t q = 0; q < groups; q++, code += n) {
                __m512i index[SIGNED_VECS];
                UNROLL for (int b = 0; b < SIGNED_VECS; b++)
                    index[b] = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(code + 16 * b)));
                UNROLL for (int i = 0; i < SIGNED_ROWS; i++) {
                    const float *table = t[i] + q * SIGN_TABLE;
                    __m512 low = _mm512_load_ps(table), high = _mm512_load_ps(table + 16);
                    UNROLL for (int b = 0; b < SIGNED_VECS; b++)
                        acc[i][b] = _mm512_add_ps(acc[i][b], _mm512_permutex2var_ps(low, index[b], high));
                }
            }
            for (int i = 0; i < rows; i++)
                UNROLL for (int b = 0; b < SIGNED_VECS; b++) {
                    float *at = c + (r + i) * n + j + 16 * b;
                    if (job->stream && ((uintptr_t)at & 63) == 0) _mm512_stream_ps(at, acc[i][b]);
                    else _mm512_storeu_ps(at, acc[i][b]);
                }
        }
        for (; j < job->end; j += 16) {
            __mmask16 valid = job->end - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (job->end - j)) - 1);
            __m512 acc[SIGNED_ROWS];
            UNROLL for (int i = 0; i < SIGNED_ROWS; i++)
                acc[i] = job->accumulate && i < rows ? _mm512_maskz_loadu_ps(valid, c + (r + i) * n + j)
                                                     : _mm512_setzero_ps();
            const uint8_t *code = codes + j;
            for (int64_t q = 0; q < groups; q++, code += n) {
                __m512i index = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(valid, code));
                UNROLL for (int i = 0; i < SIGNED_ROWS; i++) {
                    const float *table = t[i] + q * SIGN_TABLE;
                    __m512 low = _mm512_load_ps(table), high = _mm512_load_ps(table + 16);
                    acc[i] = _mm512_add_ps(acc[i], _mm512_permutex2var_ps(low, index, high));
                }
            }
            for (int i = 0; i < rows; i++) _mm512_mask_storeu_ps(c + (r + i) * n + j, valid, acc[i]);
        }
    }
    if (job->stream) _mm_sfence(); /* the streamed stores are seen before the call returns */
#else
    for (int64_t r = 0; r < m; r++)
        for (int64_t j = job->begin; j < job->end; j++) {
            const float *t = tables + r * groups * SIGN_TABLE;
            float acc = job->accumulate ? c[r * n + j] : 0.0f;
            for (int64_t q = 0; q < groups; q++, t += SIGN_TABLE) acc += t[codes[q * n + j]];
            c[r * n + j] = acc;
        }
#endif
    return NULL;
}

/* Columns [begin, end) of the +-1 rows job->input ([k][n], k = job->batch; float, or int8 where job->stride is 1) as
 * sign codes in job->result (uint8 [groups][n]); sets *job->bad when a value is neither +1 nor -1 (NaN included). */
static void *sign_codes_worker(void *arg) {
    const job_t *job = arg;
    const float *v = job->input;
    const int8_t *v8 = job->input;
    int int8 = job->stride == 1;
    uint8_t *codes = job->result;
    int64_t k = job->batch, n = job->out;
    int bad = 0;
    for (int64_t q = 0; q < job->cols; q++) {
        uint8_t *out = codes + q * n;
        int rows = k - SIGN_GROUP * q < SIGN_GROUP ? (int)(k - SIGN_GROUP * q) : SIGN_GROUP;
        int64_t j = job->begin;
#if defined(REAL_AVX512)
        if (int8) {
            const __m512i one = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);
            for (; j + 64 <= job->end; j += 64) {
                __m512i code = _mm512_setzero_si512();
                for (int i = 0; i < rows; i++) {
                    __m512i x = _mm512_loadu_si512(v8 + (SIGN_GROUP * q + i) * n + j);
                    __mmask64 positive = _mm512_cmpeq_epi8_mask(x, one);
                    bad |= (positive | _mm512_cmpeq_epi8_mask(x, minus)) != ~(__mmask64)0;
                    code = _mm512_mask_add_epi8(code, positive, code, _mm512_set1_epi8((char)(1 << i)));
                }
                _mm512_storeu_si512(out + j, code);
            }
        } else {
            const __m512 one = _mm512_set1_ps(1.0f);
            for (; j + 16 <= job->end; j += 16) {
                __m128i code = _mm_setzero_si128();
                for (int i = 0; i < rows; i++) {
                    __m512 x = _mm512_loadu_ps(v + (SIGN_GROUP * q + i) * n + j);
                    __mmask16 positive = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
                    bad |= _mm512_cmp_ps_mask(_mm512_abs_ps(x), one, _CMP_EQ_OQ) != 0xFFFF;
                    code = _mm_mask_add_epi8(code, positive, code, _mm_set1_epi8((char)(1 << i)));
                }
                _mm_storeu_si128((__m128i *)(out + j), code);
            }
        }
#endif
        for (; j < job->end; j++) {
            uint8_t code = 0;
            for (int i = 0; i < rows; i++) {
                int64_t at = (SIGN_GROUP * q + i) * n + j;
                int positive = int8 ? v8[at] == 1 : v[at] > 0.0f;
                code |= (uint8_t)(positive << i);
                bad |= int8 ? v8[at] != 1 && v8[at] != -1 : v[at] != 1.0f && v[at] != -1.0f;
            }
            out[j] = code;
        }
    }
    if (bad) __atomic_store_n(job->bad, 1, __ATOMIC_RELAXED);
    return NULL;
}

/* Rows [begin, end) of the +-1 int8 matrix job->input ([rows][n], n = job->n, rows = job->out) as the sign codes of
 * its transpose in job->result (uint8 [groups][rows]): code (q, r) has bit i set where v[r][5q+i] is +1. Each row's
 * signs become bits first (64 a vector compare), then each group's 5 bits are read out of them, into a tile of 64
 * rows that is copied out a group at a time (writing each code straight to its place touched a line per group and
 * row, `rows` bytes apart: at 4096 rows all in one cache set, 17x slower). Sets *job->bad when a value is neither
 * +1 nor -1 (or there is no memory for the tile). */
static void *transposed_codes_worker(void *arg) {
    const job_t *job = arg;
    const int8_t *v = job->input;
    uint8_t *codes = job->result;
    int64_t n = job->n, rows = job->out, words = (n + 63) / 64, groups = job->cols;
    uint64_t *bits = malloc(sizeof(uint64_t) * (size_t)(words + 1));
    uint8_t *tile = malloc((size_t)(groups * 64));
    int bad = bits == NULL || tile == NULL;
    for (int64_t r0 = job->begin; r0 < job->end && !bad; r0 += 64) {
        int64_t count_rows = job->end - r0 < 64 ? job->end - r0 : 64;
        for (int64_t t = 0; t < count_rows; t++) {
            const int8_t *row = v + (r0 + t) * n;
            for (int64_t w = 0; w < words; w++)
                bits[w] = int8_sign_word(row + 64 * w, n - 64 * w < 64 ? n - 64 * w : 64, &bad);
            bits[words] = 0;
            for (int64_t q = 0; q < groups; q++) {
                int64_t at = SIGN_GROUP * q, w = at >> 6, shift = at & 63;
                uint64_t value = bits[w] >> shift;
                if (shift > 64 - SIGN_GROUP) value |= bits[w + 1] << (64 - shift);
                tile[q * 64 + t] = (uint8_t)(value & (SIGN_TABLE - 1));
            }
        }
        for (int64_t q = 0; q < groups; q++) memcpy(codes + q * rows + r0, tile + q * 64, (size_t)count_rows);
    }
    free(bits);
    free(tile);
    if (bad) __atomic_store_n(job->bad, 1, __ATOMIC_RELAXED);
    return NULL;
}

/* ---- threads and entry points ----------------------------------------------------------------- */

static int worker_count(int threads, int64_t out) {
    int64_t words_out = (out + 63) / 64;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > words_out) threads = (int)words_out;
    return threads < 1 ? 1 : threads;
}

/* ---- a pool of worker threads kept between calls ------------------------------------------------
 *
 * (Used where the library is built without OpenMP, and in a child forked after it was loaded.)
 *
 * Starting and joining a POSIX thread costs tens of microseconds, as much as a whole hidden layer at
 * batch 1. The pool's workers stay alive: after a call each spins for SPIN_NS, so the next layer of
 * the same inference wakes them within a microsecond, then sleeps on a condition variable.
 *
 * A call's outputs are cut into chunks of whole 64-bit result words (so no two chunks share a word)
 * that the caller and the workers claim one at a time. Where a worker's core is taken (torch's
 * OpenMP threads spin for milliseconds after each parallel torch op), the caller claims the chunks
 * that worker would have done, so a call is never much slower than on one thread. Each claim is a
 * compare-and-swap on one word holding the call's number, its number of chunks and the next chunk,
 * and a worker decides from that word alone: one that wakes late, while the next call is still
 * writing its fields, can neither claim a chunk of that call nor read its chunk count.
 *
 * One call uses the pool at a time (ctypes releases the GIL, so Python threads may call at once): a
 * call that finds it busy, or cannot start a worker, starts threads of its own, each with a fixed
 * share. After fork() the child has none of the parent's workers: its pool starts empty. */

#define SPIN_NS 200000 /* 0.2 ms: longer than the Python between two layers, short enough not to hog a core */
#define CHUNKS_PER_THREAD 4 /* chunks <= 4 * MAX_THREADS < 2^16, as the claim word needs */

typedef struct {
    pthread_mutex_t busy;         /* held by the call that uses the pool */
    pthread_mutex_t lock;         /* guards `sleeping` and the condition variable */
    pthread_cond_t wake;
    int size;                     /* workers started; worker t (1..size) takes part when t < the call's threads */
    int sleeping;
    uint64_t signal;              /* atomic: the call's number << 8 | its threads */
    uint64_t start_signal;        /* the signal before the call that starts a worker */
    uint64_t claim;               /* atomic: the call's number << 32 | its chunks << 16 | the next unclaimed chunk */
    int64_t done;                 /* atomic: chunks of the current call finished */
    /* the current call (read only by a thread that claimed one of its chunks, so the call is still waiting) */
    void *(*worker)(void *);
    job_t base;
    float *scratch;
    int64_t scratch_floats;
} pool_t;

static pool_t pool = {.busy = PTHREAD_MUTEX_INITIALIZER, .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Outputs of chunk c of `chunks`: whole 64-bit words of the result bits. */
static void chunk_bounds(job_t *job, int64_t c, int64_t chunks) {
    int64_t words_out = (job->out + 63) / 64;
    int64_t end = 64 * (words_out * (c + 1) / chunks);
    job->begin = 64 * (words_out * c / chunks);
    job->end = end < job->out ? end : job->out;
}

/* Claims and runs chunks of call `number` as participant t (0 = the caller) until none is left. */
static void take_chunks(uint64_t number, int t) {
    uint64_t claim = __atomic_load_n(&pool.claim, __ATOMIC_ACQUIRE);
    for (;;) {
        if (claim >> 32 != (number & 0xffffffffu)) return; /* a later call: nothing of ours is left */
        int64_t c = (int64_t)(claim & 0xffff), chunks = (int64_t)(claim >> 16 & 0xffff);
        if (c >= chunks) return; /* all claimed; a claim that succeeds is thus of a call still waiting for it */
        if (!__atomic_compare_exchange_n(&pool.claim, &claim, claim + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            continue; /* `claim` now holds the current value */
        job_t job = pool.base;
        chunk_bounds(&job, c, chunks);
        job.tables = pool.scratch == NULL ? NULL : pool.scratch + t * pool.scratch_floats;
        pool.worker(&job);
        __atomic_add_fetch(&pool.done, 1, __ATOMIC_ACQ_REL);
        claim = __atomic_load_n(&pool.claim, __ATOMIC_ACQUIRE);
    }
}

static void *pool_worker(void *arg) {
    int index = (int)(intptr_t)arg;
    uint64_t seen = pool.start_signal, signal; /* the call it was started for may already be signalled */
    int taking_part = 1;
    for (;;) {
        int64_t spin_until = taking_part ? now_ns() + SPIN_NS : 0; /* a worker left out sleeps at once */
        int spins = 0;
        while ((signal = __atomic_load_n(&pool.signal, __ATOMIC_ACQUIRE)) == seen) {
            cpu_relax();
            if (++spins % 256 == 0 && now_ns() > spin_until) {
                pthread_mutex_lock(&pool.lock);
                pool.sleeping++;
                while (__atomic_load_n(&pool.signal, __ATOMIC_ACQUIRE) == seen)
                    pthread_cond_wait(&pool.wake, &pool.lock);
                pool.sleeping--;
                pthread_mutex_unlock(&pool.lock);
            }
        }
        seen = signal;
        taking_part = index < (int)(signal & 0xff);
        if (taking_part) take_chunks(signal >> 8, index);
    }
    return NULL;
}

static void pool_after_fork(void) {
    pthread_mutex_t unlocked = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t fresh = PTHREAD_COND_INITIALIZER;
    pool.busy = unlocked;
    pool.lock = unlocked;
    pool.wake = fresh;
    pool.size = pool.sleeping = 0;
}

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static void pool_init(void) { pthread_atfork(NULL, NULL, pool_after_fork); }

/* Runs every chunk of the call on the pool; 0 when the pool could not be used (nothing ran). */
static int pool_run(void *(*worker)(void *), job_t base, int threads, float *scratch, int64_t scratch_floats) {
    pthread_once(&pool_once, pool_init);
    if (pthread_mutex_trylock(&pool.busy) != 0) return 0;
    pool.start_signal = __atomic_load_n(&pool.signal, __ATOMIC_RELAXED);
    while (pool.size < threads - 1) {
        pthread_t id;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&id, &attr, pool_worker, (void *)(intptr_t)(pool.size + 1));
        pthread_attr_destroy(&attr);
        if (failed) {
            pthread_mutex_unlock(&pool.busy);
            return 0;
        }
        pool.size++;
    }
    int64_t words_out = (base.out + 63) / 64;
    uint64_t number = (pool.signal >> 8) + 1;
    pool.worker = worker;
    pool.base = base;
    int64_t chunks = words_out < CHUNKS_PER_THREAD * threads ? words_out : CHUNKS_PER_THREAD * threads;
    pool.scratch = scratch;
    pool.scratch_floats = scratch_floats;
    __atomic_store_n(&pool.done, 0, __ATOMIC_RELAXED);
#ifdef PACKED_TEST_STALL_US /* tests: the caller loses its core between writing the call's fields and publishing it */
    usleep(PACKED_TEST_STALL_US);
#endif
    __atomic_store_n(&pool.claim, (number & 0xffffffffu) << 32 | (uint64_t)chunks << 16, __ATOMIC_RELEASE);
    pthread_mutex_lock(&pool.lock);
    __atomic_store_n(&pool.signal, number << 8 | (uint64_t)threads, __ATOMIC_RELEASE);
    if (pool.sleeping) pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    take_chunks(number, 0);
    for (int spins = 0; __atomic_load_n(&pool.done, __ATOMIC_ACQUIRE) != chunks; spins++) {
        if (spins < 4096) cpu_relax();
        else sched_yield(); /* a worker holding a chunk was descheduled: let it run */
    }
    pthread_mutex_unlock(&pool.busy);
    return 1;
}

#ifdef _OPENMP
/* 0 in a child forked after this library was loaded: GNU OpenMP's threads do not survive fork() (a parallel region
 * in such a child hangs, torch's own included), so there the calls take the pool, which starts afresh. */
static int openmp_usable = 1;
static void openmp_after_fork(void) { openmp_usable = 0; }
__attribute__((constructor)) static void openmp_watch_forks(void) { pthread_atfork(NULL, NULL, openmp_after_fork); }
#endif

/* Runs the call on `threads` (from worker_count) threads; thread t gets the scratch floats
 * [t * scratch_floats, (t + 1) * scratch_floats). Without the pool, each thread takes a fixed range
 * of whole 64-bit result words. */
static void run(void *(*worker)(void *), job_t base, int threads, float *scratch, int64_t scratch_floats) {
    if (threads == 1) {
        base.tables = scratch;
        worker(&base);
        return;
    }
#ifdef _OPENMP
    if (openmp_usable) { /* torch's OpenMP threads: awake after its last op, where the pool's would wait for a core */
        int64_t words_out = (base.out + 63) / 64;
        int64_t chunks = words_out < CHUNKS_PER_THREAD * threads ? words_out : CHUNKS_PER_THREAD * threads;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
        for (int64_t c = 0; c < chunks; c++) {
            job_t job = base;
            chunk_bounds(&job, c, chunks);
            job.tables = scratch == NULL ? NULL : scratch + omp_get_thread_num() * scratch_floats;
            worker(&job);
        }
        return;
    }
#endif
    if (pool_run(worker, base, threads, scratch, scratch_floats)) return;
    job_t jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        jobs[t] = base;
        chunk_bounds(&jobs[t], t, threads);
        jobs[t].tables = scratch == NULL ? NULL : scratch + t * scratch_floats;
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
int real_layer(const float *x, int64_t batch, int64_t n, const uint8_t *w, int64_t out, int64_t groups,
               const uint8_t *flip, const double *threshold, void *result, int threads) {
    if (batch == 0 || out == 0) return 0;
    threads = worker_count(threads, out);
    int64_t stride = 8 * groups, table_floats = TILE_SAMPLES * 2 * groups * NIBBLE_TABLE;
    float *xs = malloc(sizeof(float) * (size_t)(stride * batch));
    double *stats = malloc(sizeof(double) * 2 * (size_t)batch);
    float *tables = aligned_alloc(64, sizeof(float) * (size_t)(threads * table_floats)); /* 64-byte tables */
    int status = xs == NULL || stats == NULL || tables == NULL;
    if (status == 0) status = sample_stats(x, n, batch, stride, xs, stats, stats + batch);
    if (status == 0) {
        job_t job = {x, w, batch, n, out, groups, flip, threshold, result, 0, out,
                     xs, stride, stats, stats + batch, NULL, NULL, 0, 0, 0, 0};
        run(real_worker, job, threads, tables, table_floats);
    }
    free(xs);
    free(stats);
    free(tables);
    return status;
}

int binary_layer(const uint64_t *h, int64_t batch, int64_t n, const uint64_t *w, int64_t out, int64_t words,
                 const uint8_t *flip, const int64_t *threshold, void *result, int threads) {
    if (batch == 0 || out == 0) return 0;
    job_t job = {h, w, batch, n, out, words, flip, threshold, result, 0, out, NULL, 0, NULL, NULL, NULL, NULL,
                 0, 0, 0, 0};
    run(binary_worker, job, worker_count(threads, out), NULL, 0);
    return 0;
}

/* Packs `rows` rows of `n` floats (int8 when `int8`), each +1 or -1, into `words` = ceil(n/64) int64 words a row.
 * Returns 0, or 2 when a value is neither +1 nor -1 (NaN included): the bits are then not to be used. */
int pack_signs(const void *v, int64_t rows, int64_t n, int int8, uint64_t *bits, int64_t words, int threads) {
    if (rows == 0 || n == 0) return 0;
    int bad = 0;
    job_t job = {v, NULL, rows, n, rows, words, NULL, NULL, bits, 0, rows, NULL, int8 ? 1 : 0, NULL, NULL, NULL, &bad,
                 0, 0, 0, 0};
    run(pack_worker, job, worker_count(threads, rows), NULL, 0);
    return bad ? 2 : 0;
}

/* The signs of the `count` floats w as int8 into signs: -1 below 0, else +1 (0, -0.0 and NaN: +1). Returns 0. */
int int8_signs(const float *w, int64_t count, int8_t *signs, int threads) {
    if (count == 0) return 0;
    job_t job = {w, NULL, 0, count, count, 0, NULL, NULL, signs, 0, count, NULL, 0, NULL, NULL, NULL, NULL, 0, 0, 0, 0};
    run(int8_signs_worker, job, worker_count(threads, count), NULL, 0);
    return 0;
}

/* The sign codes of the +-1 rows v ([k][n], float, or int8 when `int8`) into codes (uint8 [ceil(k/5)][n]), for
 * signed_sums. Returns 0, or 2 when a value is neither +1 nor -1 (NaN included): the codes are then not to be used. */
int sign_codes(const void *v, int64_t k, int64_t n, int int8, uint8_t *codes, int threads) {
    if (k == 0 || n == 0) return 0;
    int bad = 0;
    job_t job = {v, NULL, k, 0, n, (k + SIGN_GROUP - 1) / SIGN_GROUP, NULL, NULL, codes, 0, n, NULL, int8 ? 1 : 0,
                 NULL, NULL, NULL, &bad, 0, 0, 0, 0};
    run(sign_codes_worker, job, worker_count(threads, n), NULL, 0);
    return bad ? 2 : 0;
}

/* c (float [m][n]) = a @ s for a[r][i] at a[r * row_stride + i * col_stride] (i < k) and s given by its sign codes
 * (uint8 [ceil(k/5)][n], from sign_codes). The tables (128 bytes per row and group) are made for blocks of rows and of
 * groups of at most SIGNED_TABLE_BYTES in all, the sums of a later block of groups continued from the earlier one's:
 * the same additions in the same order, in bounded memory (at batch 4096 one 4096 x 4096 product's tables were 430 MB).
 * Returns 0, or 1 when out of memory. */
#ifndef SIGNED_TABLE_BYTES
#define SIGNED_TABLE_BYTES (1 << 24)
#endif
int signed_sums(const float *a, int64_t m, int64_t k, int64_t row_stride, int64_t col_stride, const uint8_t *codes,
                int64_t n, float *c, int threads) {
    if (m == 0 || n == 0) return 0;
    int64_t groups = (k + SIGN_GROUP - 1) / SIGN_GROUP, table_bytes = SIGN_TABLE * (int64_t)sizeof(float);
    int64_t budget = SIGNED_TABLE_BYTES / table_bytes; /* tables in a block */
    if (budget < 1) budget = 1;
    int64_t block_rows = m < 256 ? m : 256;
    int64_t block_groups = budget / block_rows < 1 ? 1 : budget / block_rows;
    if (block_groups >= groups) { /* every group at once: as many rows as the budget holds */
        block_groups = groups;
        block_rows = groups > 0 && budget / groups > block_rows ? budget / groups : block_rows;
        if (block_rows > m) block_rows = m;
    }
    float *tables = aligned_alloc(64, (size_t)((block_rows * (block_groups > 0 ? block_groups : 1) + 1) * table_bytes));
    if (tables == NULL) return 1;
    for (int64_t r0 = 0; r0 < m; r0 += block_rows) {
        int64_t rows = m - r0 < block_rows ? m - r0 : block_rows;
        for (int64_t g0 = 0; g0 < groups || g0 == 0; g0 += block_groups) {
            int64_t count = groups - g0 < block_groups ? groups - g0 : block_groups;
            int64_t entries = k - SIGN_GROUP * g0 < SIGN_GROUP * count ? k - SIGN_GROUP * g0 : SIGN_GROUP * count;
            job_t build = {a + r0 * row_stride + SIGN_GROUP * g0 * col_stride, NULL, rows, entries, rows, count, NULL,
                           NULL, tables, 0, rows, NULL, 0, NULL, NULL, NULL, NULL, row_stride, col_stride, 0, 0};
            run(signed_tables_worker, build, worker_count(threads, rows), NULL, 0);
            int last = g0 + count >= groups;
            job_t sums = {tables, codes + g0 * n, rows, entries, n, count, NULL, NULL, c + r0 * n, 0, n, NULL, 0, NULL,
                          NULL, NULL, NULL, 0, 0, g0 > 0, last && rows * n >= ((int64_t)1 << 22)};
            run(signed_sums_worker, sums, worker_count(threads, n), NULL, 0);
            if (groups == 0) break;
        }
    }
    free(tables);
    return 0;
}

/* The sign codes of the transpose of the +-1 int8 matrix v ([rows][n]) into codes (uint8 [ceil(n/5)][rows]), for
 * signed_sums of a real matrix by v's transpose. Returns 0, or 2 when a value is neither +1 nor -1 (or out of memory):
 * the codes are then not to be used. */
int transposed_sign_codes(const int8_t *v, int64_t rows, int64_t n, uint8_t *codes, int threads) {
    if (rows == 0 || n == 0) return 0;
    int bad = 0;
    job_t job = {v, NULL, 0, n, rows, (n + SIGN_GROUP - 1) / SIGN_GROUP, NULL, NULL, codes, 0, rows, NULL, 0, NULL,
                 NULL, NULL, &bad, 0, 0, 0, 0};
    run(transposed_codes_worker, job, worker_count(threads, rows), NULL, 0);
    return bad ? 2 : 0;
}
