/* HOG cell histograms in float32 in one pass over each image: facelab/ops/hog_native.py builds and calls it.
 *
 * The rules are hog_reference.py's (skimage's): central differences, zero on the border rows / columns; per
 * pixel the first channel of largest squared magnitude; the angle atan2(g_row, g_col) taken modulo 180
 * degrees into `n` bins of 180/n degrees, where a negative angle that rounds up to 180 is in no bin and
 * +180 is in bin 0; each cell sums its own pixels' magnitudes and divides by its area; pixels past the last
 * whole cell are dropped. The bin is found the way hog_fast.py finds it, from `n + angle * n / pi`.
 *
 * Per image row, a first loop (vectorised by the compiler: no branches, no calls) computes every pixel's
 * bin and magnitude; a second, scalar loop adds them into the row's cells. atan2 is a polynomial (libm's
 * scalar atan2f would cost more than all the rest): octant reduction to [0, 1], a second reduction by
 * pi/4 above tan(pi/8), and the degree-9 odd minimax polynomial of Cephes' atanf (coefficients from
 * Cephes 2.8, atanf.c), about an ulp from the correctly rounded angle, as torch's own atan2 (SLEEF, 1 ulp).
 * A non-finite gradient still adds its NaN to its own cell. Single-threaded: the caller splits the batch.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const float PI_F = 3.14159265358979323846f;
static const float HALF_PI_F = 1.57079632679489661923f;
static const float QUARTER_PI_F = 0.78539816339744830962f;
static const float TAN_PI_8 = 0.41421356237309504880f;

static inline float polynomial_atan2(float y, float x) {
    float ax = fabsf(x), ay = fabsf(y);
    float big = ax > ay ? ax : ay, small = ax > ay ? ay : ax;
    float ratio = small / big; /* divisions unguarded, results selected after: branches stop vectorising */
    float a = big > 0.0f ? ratio : 0.0f; /* in [0, 1]; NaN stays NaN */
    int reduce = a > TAN_PI_8;
    float reduced = (a - 1.0f) / (a + 1.0f);
    float t = reduce ? reduced : a;
    float z = t * t;
    float p = (((8.05374449538e-2f * z - 1.38776856032e-1f) * z + 1.99777106478e-1f) * z - 3.33329491539e-1f)
              * z * t + t;
    float r = reduce ? QUARTER_PI_F + p : p;
    r = ay > ax ? HALF_PI_F - r : r;
    r = signbit(x) ? PI_F - r : r;
    return copysignf(r, y); /* atan2's signed zeros: (+-0, +x) -> +-0, (+-0, -x) -> +-pi */
}

/* images [batch, channels, height, width] contiguous; hist [batch, n_rows, n_cols, n] zeroed by the caller. */
int facelab_hog_cells_f32(const float *images, int64_t batch, int64_t channels, int64_t height, int64_t width,
                          int64_t orientations, int64_t cell_row, int64_t cell_col, float *hist) {
    const int64_t n_rows = height / cell_row, n_cols = width / cell_col, n = orientations;
    const int64_t used_width = n_cols * cell_col, plane = height * width;
    const float turns_per_radian = (float)((double)n / 3.14159265358979323846);
    const float half_turn = (float)n;
    float *buffers = malloc(sizeof(float) * (size_t)(width * (2 * channels + 2)));
    if (!buffers) return 1;
    float *g_rows = buffers, *g_cols = buffers + channels * width;
    float *magnitude = g_cols + channels * width;
    int32_t *bin = (int32_t *)(magnitude + width);

    for (int64_t b = 0; b < batch; ++b) {
        const float *image = images + b * channels * plane;
        float *image_hist = hist + b * n_rows * n_cols * n;
        for (int64_t r = 0; r < n_rows * cell_row; ++r) {
            for (int64_t c = 0; c < channels; ++c) {
                const float *row = image + c * plane + r * width;
                float *g_row = g_rows + c * width, *g_col = g_cols + c * width;
                if (r == 0 || r == height - 1) {
                    memset(g_row, 0, sizeof(float) * (size_t)width);
                } else {
                    for (int64_t x = 0; x < width; ++x) g_row[x] = row[x + width] - row[x - width];
                }
                g_col[0] = 0.0f;
                g_col[width - 1] = 0.0f;
                for (int64_t x = 1; x < width - 1; ++x) g_col[x] = row[x + 1] - row[x - 1];
            }
            /* channel 0's buffers become the chosen gradient; `magnitude` holds its square until the root */
            for (int64_t x = 0; x < used_width; ++x) magnitude[x] = g_rows[x] * g_rows[x] + g_cols[x] * g_cols[x];
            for (int64_t c = 1; c < channels; ++c) {
                const float *c_rows = g_rows + c * width, *c_cols = g_cols + c * width;
                for (int64_t x = 0; x < used_width; ++x) {
                    float gr = c_rows[x], gc = c_cols[x], best = magnitude[x];
                    float squared = gr * gr + gc * gc;
                    int take = squared > best || (squared != squared && best == best); /* NaN wins, sticks */
                    magnitude[x] = take ? squared : best;
                    g_rows[x] = take ? gr : g_rows[x];
                    g_cols[x] = take ? gc : g_cols[x];
                }
            }
            for (int64_t x = 0; x < used_width; ++x) {
                float angle = polynomial_atan2(g_rows[x], g_cols[x]);
                float turns = half_turn + angle * turns_per_radian; /* in [0, 2n] */
                float clamped = turns >= 0.0f ? turns : 0.0f; /* NaN: 0 */
                clamped = clamped <= (float)(2 * n) ? clamped : (float)(2 * n);
                int32_t whole = (int32_t)clamped; /* truncation is floor: clamped >= 0 */
                int negative = angle < 0.0f;
                /* negative: bin `whole` (n: rounded up to 180, in no bin); else `whole - n`, 2n -> bin 0 */
                int32_t k = negative ? whole : whole - (int32_t)n;
                k = k == (int32_t)n && !negative ? 0 : k;
                k = k >= 0 ? k : 0; /* a NaN angle is not negative and truncates to 0: bin 0 of its cell */
                bin[x] = k; /* k == n: no bin */
                magnitude[x] = sqrtf(magnitude[x]);
            }
            float *row_hist = image_hist + (r / cell_row) * n_cols * n;
            for (int64_t col = 0, x = 0; col < n_cols; ++col) {
                float *cell_hist = row_hist + col * n;
                for (int64_t end = x + cell_col; x < end; ++x) {
                    int32_t k = bin[x];
                    if (k < n) cell_hist[k] += magnitude[x];
                }
            }
        }
        const float area = (float)(cell_row * cell_col);
        for (int64_t i = 0; i < n_rows * n_cols * n; ++i) image_hist[i] /= area;
    }
    free(buffers);
    return 0;
}
