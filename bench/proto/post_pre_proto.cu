// Design prototype: can the steady forward's two kernels become one?
//
// Today a sublayer's steady forward is hc_post_project (reads y and x, writes x_next and the
// next mixes) then hc_pre_mixed (reads x_next back, writes u): 14C elements a token, of which
// the second read of x_next (4C) is what one kernel could skip, if u = sum_i pre_i x_next_i
// could be formed in the kernel that wrote x_next. pre depends on the projection of the whole
// row, so a fused kernel must finish every chunk of its token tile first and then read the
// tile's x_next again: from L2 (just written: does it stay?) or from shared memory (only small
// tiles at small widths fit). This measures the memory side alone (no projection, no Sinkhorn:
// their cost is known from the kernels), n = 4, bf16, T = 16384:
//
//   post      x_next = post * y + comb^T x            reads 5C, writes 4C   (per token, elements)
//   pre       u = sum_i pre_i x_next_i                reads 4C, writes C
//   post+pre  the two above back to back (x_next partly still in L2 for the second)
//   fused/L2  one kernel: post for the tile, a barrier, u from the tile's x_next re-read
//   fused/smem the same with the tile's x_next kept in (dynamic) shared memory
//
//   nvcc -O3 -arch=sm_90 -o post_pre_proto bench/proto/post_pre_proto.cu && ./post_pre_proto
//
// Not product code (bench/results/session32.log has the command and the numbers).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#define CK(x)                                                                              \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      printf("CUDA error %s at line %d\n", cudaGetErrorString(e_), __LINE__);              \
      exit(1);                                                                             \
    }                                                                                      \
  } while (0)

constexpr int N = 4, VEC = 8, UNROLL = 4;

struct Vec8 {
  uint4 raw;
  __device__ void unpack(float *f) const {
    const __nv_bfloat16 *h = reinterpret_cast<const __nv_bfloat16 *>(&raw);
#pragma unroll
    for (int e = 0; e < VEC; ++e) f[e] = __bfloat162float(h[e]);
  }
  __device__ static Vec8 pack(const float *f) {
    Vec8 v;
    __nv_bfloat16 *h = reinterpret_cast<__nv_bfloat16 *>(&v.raw);
#pragma unroll
    for (int e = 0; e < VEC; ++e) h[e] = __float2bfloat16(f[e]);
    return v;
  }
};

struct Args {
  int T, C;
  const __nv_bfloat16 *y, *x;
  const float *post, *comb, *pre;
  __nv_bfloat16 *xn, *u;
};

// The tile's coefficients (post n, comb n x n, pre n per token) into shared memory.
// L2 eviction hints (HINTS): x and y are read once (evict_first); x_next is written to be read
// back by the same block (evict_last), then read for the last time (evict_first).
__device__ uint64_t l2Policy(bool last) {
  uint64_t p;
  if (last)
    asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(p));
  else
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
  return p;
}
template <bool HINTS> __device__ uint4 load16(const void *ptr, uint64_t policy) {
  if (!HINTS) return *reinterpret_cast<const uint4 *>(ptr);
  uint4 v;
  asm volatile("ld.global.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(ptr), "l"(policy));
  return v;
}
template <bool HINTS> __device__ void store16(void *ptr, uint4 v, uint64_t policy) {
  if (!HINTS) { *reinterpret_cast<uint4 *>(ptr) = v; return; }
  asm volatile("st.global.L2::cache_hint.v4.u32 [%0], {%1,%2,%3,%4}, %5;"
               :: "l"(ptr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "l"(policy) : "memory");
}

template <int TT, int THREADS>
__device__ void stageCoefficients(const Args &a, int tile0, float (*co)[2 * N + N * N]) {
  for (int i = threadIdx.x; i < TT * (2 * N + N * N); i += THREADS) {
    int t = i / (2 * N + N * N), e = i % (2 * N + N * N), tok = tile0 + t;
    float v = 0.f;
    if (tok < a.T)
      v = e < N ? a.post[tok * N + e]
                : e < N + N * N ? a.comb[tok * N * N + e - N] : a.pre[tok * N + e - N - N * N];
    co[t][e] = v;
  }
  __syncthreads();
}

// x_next for the tile's items (token, 8 columns), UNROLL items a thread in flight; optionally
// kept in shared memory too.
template <int TT, bool KEEP, int THREADS = 256, bool HINTS = false>
__device__ void postPhase(const Args &a, int tile0, float (*co)[2 * N + N * N], Vec8 *kept) {
  const int NV = a.C / VEC, items = TT * NV;
  const uint64_t first = HINTS ? l2Policy(false) : 0, last = HINTS ? l2Policy(true) : 0;
  for (int it = threadIdx.x; it < items; it += THREADS * UNROLL) {
    Vec8 xv[UNROLL][N], yv[UNROLL];
    bool ok[UNROLL];
#pragma unroll
    for (int k = 0; k < UNROLL; ++k) {
      int item = it + k * THREADS, t = item / NV, v = item % NV, tok = tile0 + t;
      ok[k] = item < items && tok < a.T;
      if (!ok[k]) continue;
      yv[k].raw = load16<HINTS>(a.y + (size_t)tok * a.C + v * VEC, first);
#pragma unroll
      for (int i = 0; i < N; ++i)
        xv[k][i].raw = load16<HINTS>(a.x + ((size_t)tok * N + i) * a.C + v * VEC, first);
    }
#pragma unroll
    for (int k = 0; k < UNROLL; ++k) {
      if (!ok[k]) continue;
      int item = it + k * THREADS, t = item / NV, v = item % NV, tok = tile0 + t;
      float yf[VEC], xf[N][VEC];
      yv[k].unpack(yf);
#pragma unroll
      for (int i = 0; i < N; ++i) xv[k][i].unpack(xf[i]);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        float o[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          o[e] = co[t][j] * yf[e];
#pragma unroll
          for (int i = 0; i < N; ++i) o[e] = fmaf(co[t][N + i * N + j], xf[i][e], o[e]);
        }
        Vec8 out = Vec8::pack(o);
        store16<HINTS>(a.xn + ((size_t)tok * N + j) * a.C + v * VEC, out.raw, last);
        if (KEEP) kept[(t * N + j) * NV + v] = out;
      }
    }
  }
}

// u for the tile from x_next in global memory (FROM_SMEM false) or from `kept`.
template <int TT, bool FROM_SMEM, int THREADS = 256, bool HINTS = false>
__device__ void prePhase(const Args &a, int tile0, float (*co)[2 * N + N * N], const Vec8 *kept) {
  const int NV = a.C / VEC, items = TT * NV;
  const uint64_t first = HINTS ? l2Policy(false) : 0;
  for (int it = threadIdx.x; it < items; it += THREADS * UNROLL) {
    Vec8 xv[UNROLL][N];
    bool ok[UNROLL];
#pragma unroll
    for (int k = 0; k < UNROLL; ++k) {
      int item = it + k * THREADS, t = item / NV, v = item % NV, tok = tile0 + t;
      ok[k] = item < items && tok < a.T;
      if (!ok[k]) continue;
#pragma unroll
      for (int i = 0; i < N; ++i)
        xv[k][i] = FROM_SMEM ? kept[(t * N + i) * NV + v]
                             : Vec8{load16<HINTS>(a.xn + ((size_t)tok * N + i) * a.C + v * VEC,
                                                  first)};
    }
#pragma unroll
    for (int k = 0; k < UNROLL; ++k) {
      if (!ok[k]) continue;
      int item = it + k * THREADS, t = item / NV, v = item % NV, tok = tile0 + t;
      float acc[VEC] = {}, xf[VEC];
#pragma unroll
      for (int i = 0; i < N; ++i) {
        xv[k][i].unpack(xf);
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[e] = fmaf(co[t][N + N * N + i], xf[e], acc[e]);
      }
      *reinterpret_cast<uint4 *>(a.u + (size_t)tok * a.C + v * VEC) = Vec8::pack(acc).raw;
    }
  }
}

template <int TT> __global__ void __launch_bounds__(256) postKernel(Args a) {
  __shared__ float co[TT][2 * N + N * N];
  int tile0 = blockIdx.x * TT;
  stageCoefficients<TT, 256>(a, tile0, co);
  postPhase<TT, false>(a, tile0, co, nullptr);
}

template <int TT> __global__ void __launch_bounds__(256) preKernel(Args a) {
  __shared__ float co[TT][2 * N + N * N];
  int tile0 = blockIdx.x * TT;
  stageCoefficients<TT, 256>(a, tile0, co);
  prePhase<TT, false>(a, tile0, co, nullptr);
}

// THREADS / MINB: 128 and 4 are the real projection kernel's block and residency (4 blocks of
// 32-token tiles an SM: 528 tiles of x_next in flight; its 40 KB of shared memory a block are
// given as unused dynamic shared memory).
template <int TT, bool SMEM, int THREADS = 256, int MINB = 1, bool HINTS = false>
__global__ void __launch_bounds__(THREADS, MINB) fusedKernel(Args a) {
  __shared__ float co[TT][2 * N + N * N];
  extern __shared__ uint4 keptRaw[];
  Vec8 *kept = reinterpret_cast<Vec8 *>(keptRaw);
  int tile0 = blockIdx.x * TT;
  stageCoefficients<TT, THREADS>(a, tile0, co);
  postPhase<TT, SMEM, THREADS, HINTS>(a, tile0, co, kept);
  __syncthreads(); // the real kernel finishes the projection and the coefficients here
  prePhase<TT, SMEM, THREADS, HINTS>(a, tile0, co, kept);
}

static float timeMs(const std::function<void()> &f, int reps = 30) {
  for (int i = 0; i < 3; ++i) f();
  cudaEvent_t s, e;
  CK(cudaEventCreate(&s));
  CK(cudaEventCreate(&e));
  CK(cudaEventRecord(s));
  for (int i = 0; i < reps; ++i) f();
  CK(cudaEventRecord(e));
  CK(cudaEventSynchronize(e));
  float ms;
  CK(cudaEventElapsedTime(&ms, s, e));
  return ms / reps;
}

template <typename Fn>
static void launch(Fn kernel, int TT, size_t smem, const Args &a, int threads = 256) {
  kernel<<<(a.T + TT - 1) / TT, threads, smem>>>(a);
}

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("device %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount,
         prop.l2CacheSize >> 20);
  size_t cb = 1ull << 30;
  void *s, *d;
  CK(cudaMalloc(&s, cb));
  CK(cudaMalloc(&d, cb));
  CK(cudaMemset(s, 1, cb));
  float cms = timeMs([&] { CK(cudaMemcpyAsync(d, s, cb, cudaMemcpyDeviceToDevice)); }, 10);
  double copy = 2.0 * cb / (cms * 1e-3) / 1e12;
  printf("copy: %.2f TB/s (read + write)\n", copy);
  CK(cudaFree(s));
  CK(cudaFree(d));

  const int T = 16384;
  for (int C : {512, 1024, 2048, 4096}) {
    size_t nc = (size_t)T * N * C;
    std::vector<uint16_t> hx(nc), hy((size_t)T * C);
    std::vector<float> hp(T * N), hc(T * N * N), hq(T * N);
    uint32_t r = 12345u + C;
    auto rnd = [&] { return (r = r * 1664525u + 1013904223u) >> 8; };
    auto bf = [&] { float f = (rnd() % 2000) / 1000.f - 1.f; uint32_t b; memcpy(&b, &f, 4); return uint16_t(b >> 16); };
    for (auto &v : hx) v = bf();
    for (auto &v : hy) v = bf();
    for (auto &v : hp) v = (rnd() % 1000) / 500.f;
    for (auto &v : hc) v = (rnd() % 1000) / 4000.f;
    for (auto &v : hq) v = (rnd() % 1000) / 1000.f;
    Args a{T, C};
    __nv_bfloat16 *x, *y, *xn, *u, *u2;
    float *p, *c, *q;
    CK(cudaMalloc(&x, nc * 2));
    CK(cudaMalloc(&xn, nc * 2));
    CK(cudaMalloc(&y, (size_t)T * C * 2));
    CK(cudaMalloc(&u, (size_t)T * C * 2));
    CK(cudaMalloc(&u2, (size_t)T * C * 2));
    CK(cudaMalloc(&p, T * N * 4));
    CK(cudaMalloc(&c, T * N * N * 4));
    CK(cudaMalloc(&q, T * N * 4));
    CK(cudaMemcpy(x, hx.data(), nc * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(y, hy.data(), (size_t)T * C * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(p, hp.data(), T * N * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(c, hc.data(), T * N * N * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(q, hq.data(), T * N * 4, cudaMemcpyHostToDevice));
    a.x = x, a.y = y, a.xn = xn, a.u = u, a.post = p, a.comb = c, a.pre = q;
    double tok = (double)T * C * 2; // bytes of one C-wide bf16 row set
    auto report = [&](const char *what, int TT, float ms, double elements) {
      printf("C=%5d %-12s TT=%3d  %8.1f us  %5.1f%% of copy on %4.0fC\n", C, what, TT, ms * 1e3,
             100 * elements * tok / (ms * 1e-3) / 1e12 / copy, elements);
    };
    float post = timeMs([&] { launch(postKernel<32>, 32, 0, a); });
    float pre = timeMs([&] { launch(preKernel<64>, 64, 0, a); });
    float pair = timeMs([&] { launch(postKernel<32>, 32, 0, a); launch(preKernel<64>, 64, 0, a); });
    report("post", 32, post, 9);
    report("pre", 64, pre, 5);
    report("post+pre", 0, pair, 14);
    CK(cudaMemcpy(u2, u, (size_t)T * C * 2, cudaMemcpyDeviceToDevice));
    auto check = [&](const char *what) { // the fused u must equal the split one, bit for bit
      std::vector<uint16_t> h1((size_t)T * C), h2((size_t)T * C);
      CK(cudaMemcpy(h1.data(), u, h1.size() * 2, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(h2.data(), u2, h2.size() * 2, cudaMemcpyDeviceToHost));
      if (memcmp(h1.data(), h2.data(), h1.size() * 2)) printf("  %s: u DIFFERS\n", what);
      CK(cudaMemset(u, 0xff, (size_t)T * C * 2));
    };
    CK(cudaMemset(u, 0xff, (size_t)T * C * 2));
    report("fused/L2", 8, timeMs([&] { launch(fusedKernel<8, false>, 8, 0, a); }), 10), check("L2 8");
    report("fused/L2", 16, timeMs([&] { launch(fusedKernel<16, false>, 16, 0, a); }), 10), check("L2 16");
    report("fused/L2", 32, timeMs([&] { launch(fusedKernel<32, false>, 32, 0, a); }), 10), check("L2 32");
    report("fused/L2", 64, timeMs([&] { launch(fusedKernel<64, false>, 64, 0, a); }), 10), check("L2 64");
    // As the real kernel runs: 128 threads, 4 blocks an SM, 32-token tiles (40 KB of shared
    // memory a block), without and with L2 eviction hints.
    const size_t tile40 = 40 * 1024, tile20 = 20 * 1024;
    report("real-like", 32, timeMs([&] { launch(fusedKernel<32, false, 128, 4, false>, 32, tile40, a, 128); }), 10), check("real-like");
    report("real+hints", 32, timeMs([&] { launch(fusedKernel<32, false, 128, 4, true>, 32, tile40, a, 128); }), 10), check("real+hints");
    report("real+hints", 16, timeMs([&] { launch(fusedKernel<16, false, 128, 4, true>, 16, tile20, a, 128); }), 10), check("real+hints 16");
    report("fused+hints", 32, timeMs([&] { launch(fusedKernel<32, false, 256, 1, true>, 32, 0, a); }), 10), check("L2+hints 32");
    for (int TT : {4, 8, 16}) {
      size_t smem = (size_t)TT * N * C * 2;
      if (smem > 200 * 1024) continue;
      auto k = TT == 4 ? fusedKernel<4, true> : TT == 8 ? fusedKernel<8, true> : fusedKernel<16, true>;
      CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
      report("fused/smem", TT, timeMs([&] { launch(k, TT, smem, a); }), 10), check("smem");
    }
    for (void *ptr : {(void *)x, (void *)xn, (void *)y, (void *)u, (void *)u2, (void *)p, (void *)c, (void *)q})
      CK(cudaFree(ptr));
  }
  return 0;
}
