/*
 * Native CSR kernels of the sparse CPU backend (kernel="native"): float32 values, int32 indices.
 *
 *   spmm : Y = W X (+ b)      W (m x k) CSR, X (k x n) row-major, Y (m x n) row-major, or
 *          written transposed: Y^T (n x m) row-major, i.e. y = x W^T as PyTorch lays it out
 *   sddmm: v[p] = G[i,:] . X[j,:] for each nonzero p = (i, j) of W
 *          G (m x n), X (k x n) row-major: the weight gradient of y = x W^T sampled at W's pattern
 *
 * Work is split between threads by nonzeros, not by rows: thread t takes the rows that hold
 * nonzeros [t*nnz/T, (t+1)*nnz/T) (rows found by binary search on the row pointer), so uneven
 * rows do not leave threads idle. The threads are OpenMP's: built with -fopenmp the module links
 * libgomp.so.1, and as torch has already loaded a library of that name the dynamic loader hands
 * us torch's own runtime, so our work runs on torch's intra-op threads. Threads of a runtime of
 * our own (we first used pthreads) competed with torch's OpenMP threads, which keep spinning for
 * a while after each torch operation: on 2 cores that made a 99 %-sparse MLP step about 2.4x
 * slower in a development measurement. Without OpenMP (another compiler) pthreads run instead.
 *
 * With AVX2 + FMA (checked at run time) each output row is accumulated in 64-column chunks held
 * in registers, prefetching the x rows of the next nonzeros; otherwise plain loops run.
 *
 * Exposed to Python as sparsetrain.sparsity.storage.csr._native (pointers passed as integers by
 * the wrapper in native.py, which checks shapes, dtypes and contiguity; the GIL is released).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 64
#define MAX_THREADS 256

typedef struct {
    const int32_t *crow, *col;
    const float *val, *x, *bias, *g;
    float *out;
    int64_t n, r0, r1;
    int64_t ld; /* 0: out is Y (m x n) row-major; else Y[i, t] goes to out[t * ld + i] (Y^T row-major) */
    int failed; /* set by a thread that could not allocate its tile */
    const int32_t *perm; /* if set, the value of nonzero p is val[perm[p]] (W^T read through W's values) */
    int avx2;
} job_t;

#define VAL(J, p) ((J)->perm ? (J)->val[(J)->perm[p]] : (J)->val[p])

/* portable kernels: plain loops the compiler vectorises for the baseline instruction set */

/* one output row i of W X (+ b), written contiguously to y */
static void row_portable(const job_t *J, int64_t i, float *y) {
    const int64_t n = J->n;
    const float b = J->bias ? J->bias[i] : 0.f;
    for (int64_t t = 0; t < n; t++) y[t] = b;
    for (int32_t p = J->crow[i]; p < J->crow[i + 1]; p++) {
        const float v = VAL(J, p);
        const float *x = J->x + (int64_t)J->col[p] * n;
        for (int64_t t = 0; t < n; t++) y[t] += v * x[t];
    }
}

static void sddmm_portable(const job_t *J) {
    const int64_t n = J->n;
    for (int64_t i = J->r0; i < J->r1; i++) {
        const float *g = J->g + i * n;
        for (int32_t p = J->crow[i]; p < J->crow[i + 1]; p++) {
            const float *x = J->x + (int64_t)J->col[p] * n;
            float s = 0.f;
            for (int64_t t = 0; t < n; t++) s += g[t] * x[t];
            J->out[p] = s;
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define PF 4 /* prefetch the x row of the nonzero this many ahead */

/* AVX2 + FMA: each output row in chunks of 64 columns held in 8 registers over the row's
   nonzeros, then 8-wide and scalar tails */
__attribute__((target("avx2,fma"))) static void row_avx2(const job_t *J, int64_t i, float *y) {
    const int64_t n = J->n;
    const float *X = J->x;
    const float b = J->bias ? J->bias[i] : 0.f;
    const int32_t p0 = J->crow[i], p1 = J->crow[i + 1];
    int64_t t0 = 0;
    for (; t0 + CHUNK <= n; t0 += CHUNK) {
        __m256 a0 = _mm256_set1_ps(b), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int32_t p = p0; p < p1; p++) {
            if (p + PF < p1) {
                const char *q = (const char *)(X + (int64_t)J->col[p + PF] * n + t0);
                _mm_prefetch(q, _MM_HINT_T0); _mm_prefetch(q + 64, _MM_HINT_T0);
                _mm_prefetch(q + 128, _MM_HINT_T0); _mm_prefetch(q + 192, _MM_HINT_T0);
            }
            const __m256 v = _mm256_set1_ps(VAL(J, p));
            const float *x = X + (int64_t)J->col[p] * n + t0;
            a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x), a0);
            a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 8), a1);
            a2 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 16), a2);
            a3 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 24), a3);
            a4 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 32), a4);
            a5 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 40), a5);
            a6 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 48), a6);
            a7 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 56), a7);
        }
        _mm256_storeu_ps(y + t0, a0); _mm256_storeu_ps(y + t0 + 8, a1);
        _mm256_storeu_ps(y + t0 + 16, a2); _mm256_storeu_ps(y + t0 + 24, a3);
        _mm256_storeu_ps(y + t0 + 32, a4); _mm256_storeu_ps(y + t0 + 40, a5);
        _mm256_storeu_ps(y + t0 + 48, a6); _mm256_storeu_ps(y + t0 + 56, a7);
    }
    for (; t0 + 8 <= n; t0 += 8) {
        __m256 a = _mm256_set1_ps(b);
        for (int32_t p = p0; p < p1; p++)
            a = _mm256_fmadd_ps(_mm256_set1_ps(VAL(J, p)), _mm256_loadu_ps(X + (int64_t)J->col[p] * n + t0), a);
        _mm256_storeu_ps(y + t0, a);
    }
    for (; t0 < n; t0++) {
        float a = b;
        for (int32_t p = p0; p < p1; p++) a += VAL(J, p) * X[(int64_t)J->col[p] * n + t0];
        y[t0] = a;
    }
}

__attribute__((target("avx2,fma"))) static void sddmm_avx2(const job_t *J) {
    const int64_t n = J->n;
    for (int64_t i = J->r0; i < J->r1; i++) {
        const float *g = J->g + i * n;
        const int32_t p1 = J->crow[i + 1];
        for (int32_t p = J->crow[i]; p < p1; p++) {
            if (p + PF < p1) {
                const char *q = (const char *)(J->x + (int64_t)J->col[p + PF] * n);
                for (int64_t c = 0; c < n * 4; c += 64) _mm_prefetch(q + c, _MM_HINT_T0);
            }
            const float *x = J->x + (int64_t)J->col[p] * n;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int64_t t = 0;
            for (; t + 32 <= n; t += 32) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(g + t), _mm256_loadu_ps(x + t), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(g + t + 8), _mm256_loadu_ps(x + t + 8), a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(g + t + 16), _mm256_loadu_ps(x + t + 16), a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(g + t + 24), _mm256_loadu_ps(x + t + 24), a3);
            }
            for (; t + 8 <= n; t += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(g + t), _mm256_loadu_ps(x + t), a0);
            __m256 a = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
            float s = _mm_cvtss_f32(h);
            for (; t < n; t++) s += g[t] * x[t];
            J->out[p] = s;
        }
    }
}

static int cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
#define row_avx2 row_portable
#define sddmm_avx2 sddmm_portable
static int cpu_has_avx2(void) { return 0; }
#endif

#define TILE_ROWS 16

/* rows r0..r1 of W X (+ b): straight into Y, or for Y^T through a tile of TILE_ROWS rows that is
   written out transposed (each store then fills 64 contiguous bytes of a row of Y^T instead of
   one float per row: strided single stores cost more than the products at high sparsity) */
static void *run_spmm(void *arg) {
    job_t *J = (job_t *)arg;
    void (*row)(const job_t *, int64_t, float *) = J->avx2 ? row_avx2 : row_portable;
    const int64_t n = J->n, ld = J->ld;
    if (!ld) {
        for (int64_t i = J->r0; i < J->r1; i++) row(J, i, J->out + i * n);
        return NULL;
    }
    float *tile = (float *)malloc(sizeof(float) * TILE_ROWS * (n > 0 ? n : 1));
    if (!tile) {
        J->failed = 1;
        return NULL;
    }
    for (int64_t i0 = J->r0; i0 < J->r1; i0 += TILE_ROWS) {
        const int64_t rows = J->r1 - i0 < TILE_ROWS ? J->r1 - i0 : TILE_ROWS;
        for (int64_t r = 0; r < rows; r++) row(J, i0 + r, tile + r * n);
        for (int64_t t = 0; t < n; t++) {
            float *o = J->out + t * ld + i0;
            for (int64_t r = 0; r < rows; r++) o[r] = tile[r * n + t];
        }
    }
    free(tile);
    return NULL;
}

static void *run_sddmm(void *arg) {
    const job_t *J = (const job_t *)arg;
    if (J->avx2) sddmm_avx2(J); else sddmm_portable(J);
    return NULL;
}

/* first row whose row pointer reaches `target` nonzeros */
static int64_t row_at(const int32_t *crow, int64_t m, int64_t target) {
    int64_t a = 0, b = m;
    while (a < b) {
        int64_t mid = a + (b - a) / 2;
        if (crow[mid] < target) a = mid + 1; else b = mid;
    }
    return a;
}

static int AVX2 = 0;

/* split rows by nonzeros over `threads` jobs and run them; returns whether any job failed */
static int run_split(job_t base, int64_t m, int threads, void *(*fn)(void *)) {
    job_t jobs[MAX_THREADS];
    const int64_t nnz = base.crow[m];
    /* at least ~2^18 multiply-adds per thread: below that, starting a thread costs more than it saves */
    const int64_t useful = (nnz * base.n >> 18) + 1;
    if ((int64_t)threads > useful) threads = (int)useful;
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if ((int64_t)threads > m) threads = m > 0 ? (int)m : 1;
    int64_t prev = 0;
    for (int t = 0; t < threads; t++) {
        jobs[t] = base;
        jobs[t].r0 = prev;
        jobs[t].r1 = t == threads - 1 ? m : row_at(base.crow, m, nnz * (t + 1) / threads);
        prev = jobs[t].r1;
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1)
    for (int t = 0; t < threads; t++) fn(&jobs[t]);
#else
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS];
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&tids[t], NULL, fn, &jobs[t]) == 0;
    fn(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(tids[t], NULL);
        else fn(&jobs[t]);  /* could not start a thread: do its share here */
    }
#endif
    int failed = 0;
    for (int t = 0; t < threads; t++) failed |= jobs[t].failed;
    return failed;
}

static PyObject *py_spmm(PyObject *self, PyObject *args) {
    unsigned long long crow, col, val, x, bias, out, perm;
    long long m, n, ld;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKKKKLLLiK", &crow, &col, &val, &x, &bias, &out, &m, &n, &ld, &threads, &perm))
        return NULL;
    job_t J = {(const int32_t *)(uintptr_t)crow, (const int32_t *)(uintptr_t)col, (const float *)(uintptr_t)val,
               (const float *)(uintptr_t)x, (const float *)(uintptr_t)bias, NULL, (float *)(uintptr_t)out,
               n, 0, 0, ld, 0, (const int32_t *)(uintptr_t)perm, AVX2};
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = run_split(J, m, threads, run_spmm);
    Py_END_ALLOW_THREADS
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_sddmm(PyObject *self, PyObject *args) {
    unsigned long long crow, col, g, x, out;
    long long m, n;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKKKLLi", &crow, &col, &g, &x, &out, &m, &n, &threads))
        return NULL;
    job_t J = {(const int32_t *)(uintptr_t)crow, (const int32_t *)(uintptr_t)col, NULL,
               (const float *)(uintptr_t)x, NULL, (const float *)(uintptr_t)g, (float *)(uintptr_t)out,
               n, 0, 0, 0, 0, NULL, AVX2};
    Py_BEGIN_ALLOW_THREADS
    run_split(J, m, threads, run_sddmm);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_set_avx2(PyObject *self, PyObject *args) {
    int on;
    if (!PyArg_ParseTuple(args, "p", &on)) return NULL;
    AVX2 = on && cpu_has_avx2();
    return PyBool_FromLong(AVX2);
}

static PyMethodDef methods[] = {
    {"spmm", py_spmm, METH_VARARGS,
     "spmm(crow, col, val, x, bias_or_0, out, m, n, ld, threads, perm_or_0): out = W x (+ b); ld > 0 writes "
     "(W x)^T with row stride ld; with perm, nonzero p has value val[perm[p]]"},
    {"sddmm", py_sddmm, METH_VARARGS, "sddmm(crow, col, g, x, out, m, n, threads): out[p] = g[i] . x[j]"},
    {"set_avx2", py_set_avx2, METH_VARARGS, "use the AVX2+FMA build if the CPU has it; returns whether it is used"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "Native CSR kernels (see native.py).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__native(void) {
    AVX2 = cpu_has_avx2();
    return PyModule_Create(&module);
}
