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
//   cluster    (C >= 2048) the wide-row design: a cluster of K blocks shares a token tile, block k
//              owning columns [k C/K, (k+1) C/K) of every stream, so a tile's x_next fits in the
//              blocks' shared memory and each block would need only its own slice of fn. The
//              projection's partial sums (here two: sum x_next^2 and one row of fn) go to the
//              token's owner block through distributed shared memory, one cluster barrier a
//              tile; the owner runs a stand-in coefficient stage (a 4 x 4 Sinkhorn, `iters`
//              iterations, one thread a token) and sends each block the token's pre; u follows
//              from the kept x_next one tile later (software pipelined: the barrier of tile i
//              also publishes tile i-1's coefficients). Checked against the same math in
//              separate kernels. Not included: the other 23 rows of the projection (the real
//              kernel's tensor-core products).
//
//   nvcc -O3 -arch=sm_90 -o post_pre_proto bench/proto/post_pre_proto.cu && ./post_pre_proto
//
// Not product code (bench/results/session32.log has the command and the numbers; session33.log
// the cluster variant's: 3-6x slower than the split pair at C = 4096, see there why).
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cmath>
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
  const float *fnRow; // [N * C]: the one projection row the cluster variant computes
  float *preOut;      // [T * N]: the cluster variant's coefficients (for the check)
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

// x_next of stream j for one item (8 columns): post[j] y + sum_i comb[i][j] x[i], with the
// tile token's coefficients `co` (post n, comb n x n).
__device__ Vec8 postStream(const float *co, const float *yf, const float (*xf)[VEC], int j) {
  float o[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    o[e] = co[j] * yf[e];
#pragma unroll
    for (int i = 0; i < N; ++i) o[e] = fmaf(co[N + i * N + j], xf[i][e], o[e]);
  }
  return Vec8::pack(o);
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
        Vec8 out = postStream(co[t], yf, xf, j);
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

// ---- The cluster variant (see the header) ------------------------------------------------------
namespace cg = cooperative_groups;

// Stand-in for the coefficient stage, one thread a token: the mixes' normalisation, a 4 x 4
// Sinkhorn of `iters` iterations (the real stage's dependent chain), pre from the result.
__device__ void coefficientStage(float ss, float dot, int C, int iters, float *pre) {
  float m = dot * rsqrtf(ss / (N * C) + 1e-6f);
  float M[N][N];
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < N; ++j) M[i][j] = __expf(m * 0.01f * (i - j) + 0.1f * ((i + 2 * j) % N));
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      float r = 0.f;
#pragma unroll
      for (int j = 0; j < N; ++j) r += M[i][j];
#pragma unroll
      for (int j = 0; j < N; ++j) M[i][j] /= r;
    }
#pragma unroll
    for (int j = 0; j < N; ++j) {
      float c = 0.f;
#pragma unroll
      for (int i = 0; i < N; ++i) c += M[i][j];
#pragma unroll
      for (int i = 0; i < N; ++i) M[i][j] /= c;
    }
  }
#pragma unroll
  for (int i = 0; i < N; ++i) pre[i] = 1.f / (1.f + __expf(-(m * 0.01f + M[i][i])));
}

// The reference: one block a token, from x_next in global memory (after postKernel).
__global__ void __launch_bounds__(256) referenceCoefficients(Args a, int iters) {
  __shared__ float red[2][256];
  int tok = blockIdx.x;
  float ss = 0.f, dot = 0.f;
  for (int e = threadIdx.x; e < N * a.C; e += 256) {
    float v = __bfloat162float(a.xn[(size_t)tok * N * a.C + e]);
    ss = fmaf(v, v, ss);
    dot = fmaf(v, a.fnRow[e], dot);
  }
  red[0][threadIdx.x] = ss, red[1][threadIdx.x] = dot;
  __syncthreads();
  for (int h = 128; h; h /= 2) {
    if (threadIdx.x < h)
      red[0][threadIdx.x] += red[0][threadIdx.x + h], red[1][threadIdx.x] += red[1][threadIdx.x + h];
    __syncthreads();
  }
  if (threadIdx.x == 0) coefficientStage(red[0][0], red[1][0], a.C, iters, a.preOut + tok * N);
}

// u for tile `tile0` from the kept x_next of this block's columns and the tile's coefficients.
template <int TT, int K>
__device__ void clusterPre(const Args &a, int tile0, int col0, const Vec8 *kept,
                           const float (*coef)[N]) {
  const int NV = a.C / K / VEC, items = TT * NV;
  for (int item = threadIdx.x; item < items; item += 256) {
    int t = item / NV, v = item % NV, tok = tile0 + t;
    if (tok >= a.T) continue;
    float acc[VEC] = {}, xf[VEC];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      kept[(t * N + i) * NV + v].unpack(xf);
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[e] = fmaf(coef[t][i], xf[e], acc[e]);
    }
    *reinterpret_cast<uint4 *>(a.u + (size_t)tok * a.C + col0 + v * VEC) = Vec8::pack(acc).raw;
  }
}

// Persistent: cluster c takes tiles c, c + clusters, ... Needs C / K / 8 a multiple of 32 (a
// warp's items share a token).
template <int TT, int K, int MINB>
__global__ void __launch_bounds__(256, MINB) clusterKernel(Args a, int iters) {
  constexpr int SEGS = 32; // >= C / K / 8 / 32
  __shared__ float co[TT][2 * N + N * N];
  __shared__ float red[TT][SEGS][2];
  __shared__ float part[2][K][TT][2]; // [buffer][sender][token]: written by the senders
  __shared__ float coef[2][TT][N];    // [buffer][token]: written by the token's owner
  extern __shared__ uint4 keptRaw[];  // [2][TT][N][C / K] bf16
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = cluster.block_rank(), clusterId = blockIdx.x / K, clusters = gridDim.x / K;
  const int NV = a.C / K / VEC, items = TT * NV, col0 = rank * (a.C / K);
  const int tiles = (a.T + TT - 1) / TT;
  auto keptBuf = [&](int b) { return reinterpret_cast<Vec8 *>(keptRaw) + b * TT * N * NV; };
  int buf = 0, prevTile = -1;
  for (int tile = clusterId; tile < tiles; tile += clusters, buf ^= 1) {
    const int tile0 = tile * TT;
    stageCoefficients<TT, 256>(a, tile0, co);
    Vec8 *kept = keptBuf(buf);
    for (int it = threadIdx.x; it < items; it += 256 * UNROLL) {
      Vec8 xv[UNROLL][N], yv[UNROLL];
#pragma unroll
      for (int k = 0; k < UNROLL; ++k) {
        int item = it + k * 256, t = item / NV, v = item % NV, tok = tile0 + t;
        if (item >= items || tok >= a.T) continue;
        yv[k].raw = *reinterpret_cast<const uint4 *>(a.y + (size_t)tok * a.C + col0 + v * VEC);
#pragma unroll
        for (int i = 0; i < N; ++i)
          xv[k][i].raw =
              *reinterpret_cast<const uint4 *>(a.x + ((size_t)tok * N + i) * a.C + col0 + v * VEC);
      }
#pragma unroll
      for (int k = 0; k < UNROLL; ++k) {
        int item = it + k * 256, t = item / NV, v = item % NV, tok = tile0 + t;
        if (item >= items) continue; // warp-uniform: items is a multiple of 32
        float ss = 0.f, dot = 0.f;
        if (tok < a.T) {
          float yf[VEC], xf[N][VEC];
          yv[k].unpack(yf);
#pragma unroll
          for (int i = 0; i < N; ++i) xv[k][i].unpack(xf[i]);
#pragma unroll
          for (int j = 0; j < N; ++j) {
            Vec8 out = postStream(co[t], yf, xf, j);
            *reinterpret_cast<uint4 *>(a.xn + ((size_t)tok * N + j) * a.C + col0 + v * VEC) = out.raw;
            kept[(t * N + j) * NV + v] = out;
            float r[VEC];
            out.unpack(r); // the projection reads x_next as stored
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
              ss = fmaf(r[e], r[e], ss);
              dot = fmaf(r[e], a.fnRow[j * a.C + col0 + v * VEC + e], dot);
            }
          }
        }
#pragma unroll
        for (int o = 16; o; o /= 2)
          ss += __shfl_xor_sync(0xffffffffu, ss, o), dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if ((threadIdx.x & 31) == 0) red[t][v / 32][0] = ss, red[t][v / 32][1] = dot;
      }
    }
    __syncthreads();
    if (threadIdx.x < TT) { // this block's partials of the tile's tokens, to their owners
      int t = threadIdx.x;
      float ss = 0.f, dot = 0.f;
      for (int s2 = 0; s2 < NV / 32; ++s2) ss += red[t][s2][0], dot += red[t][s2][1];
      float *dst = cluster.map_shared_rank(&part[buf][rank][t][0], t % K);
      dst[0] = ss, dst[1] = dot;
    }
    cluster.sync(); // this tile's partials and the previous tile's coefficients are in place
    if (prevTile >= 0) clusterPre<TT, K>(a, prevTile * TT, col0, keptBuf(buf ^ 1), coef[buf ^ 1]);
    if (threadIdx.x < TT && threadIdx.x % K == rank) { // the tokens this block owns
      int t = threadIdx.x, tok = tile0 + t;
      float ss = 0.f, dot = 0.f;
      for (int k = 0; k < K; ++k) ss += part[buf][k][t][0], dot += part[buf][k][t][1];
      float pre[N];
      coefficientStage(ss, dot, a.C, iters, pre);
      for (int k = 0; k < K; ++k) {
        float *dst = cluster.map_shared_rank(&coef[buf][t][0], k);
#pragma unroll
        for (int i = 0; i < N; ++i) dst[i] = pre[i];
      }
      if (tok < a.T)
#pragma unroll
        for (int i = 0; i < N; ++i) a.preOut[tok * N + i] = pre[i];
    }
    prevTile = tile;
  }
  cluster.sync(); // the last tile's coefficients are in place; no remote access after this
  if (prevTile >= 0) clusterPre<TT, K>(a, prevTile * TT, col0, keptBuf(buf ^ 1), coef[buf ^ 1]);
}

// Launches clusterKernel<TT, K, MINB> persistently (as many clusters as fit at once); 0 if none fit.
template <int TT, int K, int MINB = 2>
static int launchCluster(const Args &a, int iters, bool run = true) {
  auto kernel = clusterKernel<TT, K, MINB>;
  size_t smem = (size_t)2 * TT * N * (a.C / K) * 2;
  CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  if (K > 8) CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = K, attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
  cfg.blockDim = dim3(256), cfg.dynamicSmemBytes = smem, cfg.attrs = attr, cfg.numAttrs = 1;
  cfg.gridDim = dim3(K * 64);
  int clusters = 0;
  CK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg));
  if (!clusters || !run) return clusters;
  cfg.gridDim = dim3(K * clusters);
  CK(cudaLaunchKernelEx(&cfg, kernel, a, iters));
  return clusters;
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
    if (C >= 2048) { // the cluster variant against the same math in separate kernels
      std::vector<float> hw((size_t)N * C);
      for (auto &v : hw) v = ((rnd() % 2000) / 1000.f - 1.f) * 0.05f;
      float *w, *pre1, *pre2;
      CK(cudaMalloc(&w, hw.size() * 4));
      CK(cudaMalloc(&pre1, T * N * 4));
      CK(cudaMalloc(&pre2, T * N * 4));
      CK(cudaMemcpy(w, hw.data(), hw.size() * 4, cudaMemcpyHostToDevice));
      a.fnRow = w;
      Args ref = a;
      ref.preOut = pre1, ref.pre = pre1;
      launch(postKernel<32>, 32, 0, ref);
      referenceCoefficients<<<T, 256>>>(ref, 20);
      launch(preKernel<64>, 64, 0, ref);
      CK(cudaDeviceSynchronize());
      std::vector<uint16_t> xnRef(nc), uRef((size_t)T * C), xnGot(nc), uGot((size_t)T * C);
      std::vector<float> preRef(T * N), preGot(T * N);
      CK(cudaMemcpy(xnRef.data(), xn, nc * 2, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(uRef.data(), u, uRef.size() * 2, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(preRef.data(), pre1, T * N * 4, cudaMemcpyDeviceToHost));
      auto f32 = [](uint16_t b) { uint32_t w32 = uint32_t(b) << 16; float f; memcpy(&f, &w32, 4); return f; };
      Args cl = a;
      cl.preOut = pre2;
      // MINB: blocks an SM the registers are capped for (2: <= 128 registers).
      struct Variant { int TT, K, MINB; int (*fn)(const Args &, int, bool); };
      const Variant variants[] = {
          {4, 4, 2, launchCluster<4, 4>},   {8, 4, 2, launchCluster<8, 4>},
          {4, 8, 2, launchCluster<4, 8>},   {8, 8, 2, launchCluster<8, 8>},
          {8, 8, 1, launchCluster<8, 8, 1>}, {16, 8, 2, launchCluster<16, 8>},
          {8, 16, 2, launchCluster<8, 16>}, {16, 16, 2, launchCluster<16, 16>}};
      for (const Variant &vr : variants) {
        if ((C / vr.K) % 256 || (size_t)16 * vr.TT * C / vr.K > 200 * 1024) continue;
        for (int iters : {20, 0}) {
          int clusters = vr.fn(cl, iters, false);
          char name[64];
          snprintf(name, sizeof name, "cluster K=%d%s%s", vr.K, vr.MINB == 1 ? " b1" : "",
                   iters ? "" : " it0");
          if (!clusters) { printf("C=%5d %s TT=%d: no cluster fits\n", C, name, vr.TT); continue; }
          CK(cudaMemset(u, 0xff, (size_t)T * C * 2));
          CK(cudaMemset(xn, 0xff, nc * 2));
          float ms = timeMs([&] { vr.fn(cl, iters, true); });
          CK(cudaGetLastError());
          report(name, vr.TT, ms, 10);
          printf("      %d clusters of %d, %zu KB kept a block\n", clusters, vr.K,
                 (size_t)16 * vr.TT * C / vr.K / 1024);
          if (iters != 20) continue;
          CK(cudaMemcpy(xnGot.data(), xn, nc * 2, cudaMemcpyDeviceToHost));
          CK(cudaMemcpy(uGot.data(), u, uGot.size() * 2, cudaMemcpyDeviceToHost));
          CK(cudaMemcpy(preGot.data(), pre2, T * N * 4, cudaMemcpyDeviceToHost));
          size_t xnDiff = 0, uBad = 0, preBad = 0;
          double preMax = 0;
          for (size_t i = 0; i < nc; ++i) xnDiff += xnRef[i] != xnGot[i];
          for (size_t i = 0; i < uRef.size(); ++i) {
            float r0 = f32(uRef[i]), g0 = f32(uGot[i]);
            uBad += !(fabsf(r0 - g0) <= 0.02f * fmaxf(1.f, fabsf(r0)));
          }
          for (size_t i = 0; i < preRef.size(); ++i) {
            double d = fabs((double)preRef[i] - preGot[i]);
            preMax = d > preMax ? d : preMax;
            preBad += !(d <= 1e-4);
          }
          printf("      check: x_next %zu of %zu differ (want 0), u %zu outside 2%% (want 0), pre %zu "
                 "outside 1e-4 (max %.2e)\n", xnDiff, nc, uBad, preBad, preMax);
        }
      }
      for (void *ptr : {(void *)w, (void *)pre1, (void *)pre2}) CK(cudaFree(ptr));
    }
    for (void *ptr : {(void *)x, (void *)xn, (void *)y, (void *)u, (void *)u2, (void *)p, (void *)c, (void *)q})
      CK(cudaFree(ptr));
  }
  return 0;
}
