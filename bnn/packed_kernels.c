/* Inner products of bnn.PackedMLP, for bnn/native.py (built on first use with the system C compiler).
 *
 * Bit i of a packed row is column i (1 for +1, 0 for -1), as written by bnn.packed.pack_bits.
 * Rows and outputs are split between `threads` POSIX threads when the work is large enough.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#define MAX_THREADS 64

typedef struct {
    const void *input;      /* first layer: float x[batch][n]; hidden: uint64 h[batch][words] */
    const void *weight;     /* first layer: uint8 w[groups][out] (transposed); hidden: uint64 w[out][words] */
    int64_t batch, n, out, cols;  /* cols: groups (first layer) or words (hidden) */
    const uint8_t *flip;    /* threshold and pack into bits: NULL to return the pre-activation */
    const void *threshold;  /* double (first layer) or int64 (hidden) */
    void *result;           /* bits: uint64 [batch][ceil(out/64)]; else double / int64 [batch][out] */
    int64_t begin, end;     /* outputs [begin, end) handled by this worker */
    double *sums;           /* first layer: scratch of `out` doubles */
} job_t;

static inline void put_bit(uint64_t *row, int64_t o, int fires) {
    if (fires) row[o >> 6] |= (uint64_t)1 << (o & 63);
}

/* Table of the 256 signed sums of 8 inputs: t[b] = sum_j (bit j of b ? +x_j : -x_j), built so that
 * each entry adds 2 x_j to an entry with one bit fewer. */
static void byte_table(const float *x, int64_t n, int64_t groups, double *table) {
    for (int64_t g = 0; g < groups; g++) {
        double xs[8], *t = table + 256 * g;
        double total = 0.0;
        for (int j = 0; j < 8; j++) {
            int64_t col = 8 * g + j;
            xs[j] = col < n ? (double)x[col] : 0.0;
            total += xs[j];
        }
        t[0] = -total;
        for (int b = 1; b < 256; b++) {
            int low = __builtin_ctz(b);
            t[b] = t[b & (b - 1)] + 2.0 * xs[low];
        }
    }
}

static void *real_worker(void *arg) {
    job_t *job = arg;
    const uint8_t *w = job->weight;
    int64_t groups = job->cols, words_out = (job->out + 63) / 64;
    double *table = malloc(sizeof(double) * 256 * groups);
    for (int64_t s = 0; s < job->batch; s++) {
        byte_table((const float *)job->input + s * job->n, job->n, groups, table);
        /* weights are stored transposed, w[g][o]: for each group, every output adds one table
         * entry (a gather the compiler vectorizes); each output's sum keeps the order g = 0, 1, ... */
        double *sums = job->sums;
        for (int64_t o = job->begin; o < job->end; o++) sums[o] = 0.0;
        for (int64_t g = 0; g < groups; g++) {
            const double *t = table + 256 * g;
            const uint8_t *wg = w + g * job->out;
            for (int64_t o = job->begin; o < job->end; o++) sums[o] += t[wg[o]];
        }
        for (int64_t o = job->begin; o < job->end; o++) {
            if (job->flip == NULL) {
                ((double *)job->result)[s * job->out + o] = sums[o];
            } else {
                double value = job->flip[o] ? -sums[o] : sums[o];
                put_bit((uint64_t *)job->result + s * words_out, o, value >= ((const double *)job->threshold)[o]);
            }
        }
    }
    free(table);
    return NULL;
}

static void *binary_worker(void *arg) {
    job_t *job = arg;
    const uint64_t *w = job->weight;
    int64_t words = job->cols, words_out = (job->out + 63) / 64;
    for (int64_t s = 0; s < job->batch; s++) {
        const uint64_t *h = (const uint64_t *)job->input + s * words;
        for (int64_t o = job->begin; o < job->end; o++) {
            const uint64_t *row = w + o * words;
            int64_t mismatches = 0;
            for (int64_t k = 0; k < words; k++) mismatches += __builtin_popcountll(h[k] ^ row[k]);
            int64_t a = job->n - 2 * mismatches;
            if (job->flip == NULL) {
                ((int64_t *)job->result)[s * job->out + o] = a;
            } else {
                int64_t value = job->flip[o] ? -a : a;
                put_bit((uint64_t *)job->result + s * words_out, o, value >= ((const int64_t *)job->threshold)[o]);
            }
        }
    }
    return NULL;
}

/* Outputs are split into `threads` ranges of whole 64-bit words (so no two workers share a word). */
static int run(void *(*worker)(void *), job_t base, int threads) {
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
    for (int t = started + 1; t < threads; t++) worker(&jobs[t]);  /* threads that could not start */
    worker(&jobs[0]);
    for (int t = 1; t <= started; t++) pthread_join(ids[t], NULL);
    return 0;
}

int real_layer(const float *x, int64_t batch, int64_t n, const uint8_t *w, int64_t out, int64_t groups,
               const uint8_t *flip, const double *threshold, void *result, int threads) {
    double *sums = malloc(sizeof(double) * out);
    job_t job = {x, w, batch, n, out, groups, flip, threshold, result, 0, out, sums};
    int status = run(real_worker, job, threads);
    free(sums);
    return status;
}

int binary_layer(const uint64_t *h, int64_t batch, int64_t n, const uint64_t *w, int64_t out, int64_t words,
                 const uint8_t *flip, const int64_t *threshold, void *result, int threads) {
    job_t job = {h, w, batch, n, out, words, flip, threshold, result, 0, out, NULL};
    return run(binary_worker, job, threads);
}
