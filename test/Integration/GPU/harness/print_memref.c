/* printMemref* for GPU-path programs run away from an MLIR install.
 *
 * The programs that test/Integration/GPU/harness/build_programs.py compiles
 * print with MLIR's printMemrefF32 / printMemrefI32 / printMemrefShapeI32
 * (libmlir_runner_utils.so, which needs libMLIR and libLLVM). This library
 * gives the same entry points (plain and _mlir_ciface_ forms) and the same
 * "Unranked Memref ... sizes = [...] ... data =" header, with every element
 * (f32 with 9 significant digits) in row-major order. Plain C, no deps. */
#include <inttypes.h>
#include <stdio.h>

typedef struct {
  int64_t rank;
  void *descriptor;
} UnrankedMemRef;

/* {T *allocated, T *aligned, int64 offset, int64 sizes[rank], int64 strides[rank]} */
typedef struct {
  void *allocated;
  void *aligned;
  int64_t offset;
  int64_t sizesAndStrides[];
} StridedMemRef;

enum Kind { F32, I32 };

static void printHeader(int64_t rank, const StridedMemRef *m) {
  printf("Unranked Memref base@ = %p rank = %" PRId64 " offset = %" PRId64
         " sizes = [",
         m->aligned, rank, m->offset);
  for (int64_t d = 0; d < rank; ++d)
    printf("%s%" PRId64, d ? ", " : "", m->sizesAndStrides[d]);
  printf("] strides = [");
  for (int64_t d = 0; d < rank; ++d)
    printf("%s%" PRId64, d ? ", " : "", m->sizesAndStrides[rank + d]);
  printf("] data = \n");
}

static void printMemref(int64_t rank, void *descriptor, enum Kind kind,
                        int withData) {
  const StridedMemRef *m = (const StridedMemRef *)descriptor;
  printHeader(rank, m);
  if (withData) {
    int64_t count = 1;
    for (int64_t d = 0; d < rank; ++d)
      count *= m->sizesAndStrides[d];
    int64_t index[16] = {0};
    printf("[");
    for (int64_t i = 0; i < count && rank <= 16; ++i) {
      int64_t at = m->offset;
      for (int64_t d = 0; d < rank; ++d)
        at += index[d] * m->sizesAndStrides[rank + d];
      if (kind == F32)
        printf("%s%.9g", i ? ", " : "", ((const float *)m->aligned)[at]);
      else
        printf("%s%" PRId32, i ? ", " : "", ((const int32_t *)m->aligned)[at]);
      for (int64_t d = rank - 1; d >= 0; --d) { /* next row-major index */
        if (++index[d] < m->sizesAndStrides[d])
          break;
        index[d] = 0;
      }
    }
    printf("]\n");
  }
  fflush(stdout);
}

void printMemrefF32(int64_t rank, void *d) { printMemref(rank, d, F32, 1); }
void printMemrefI32(int64_t rank, void *d) { printMemref(rank, d, I32, 1); }
void printMemrefShapeI32(int64_t rank, void *d) { printMemref(rank, d, I32, 0); }
void _mlir_ciface_printMemrefF32(UnrankedMemRef *m) {
  printMemref(m->rank, m->descriptor, F32, 1);
}
void _mlir_ciface_printMemrefI32(UnrankedMemRef *m) {
  printMemref(m->rank, m->descriptor, I32, 1);
}
void _mlir_ciface_printMemrefShapeI32(UnrankedMemRef *m) {
  printMemref(m->rank, m->descriptor, I32, 0);
}
