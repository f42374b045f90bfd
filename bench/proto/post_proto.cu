// Design prototype for the fused "post" kernel (post_res(l) + norm_project(l+1)), n = 4, bf16.
// Not product code: it exists to choose the schedule that --convert-mhc-to-gpu then emits, by timing
// variants in one GPU run (bench/results/post-proto-h200.log has the numbers and the command).
//
// Schedule tried here ("register-direct"): every warp owns 16*MT tokens and walks C in groups of
// 4*VB columns. Thread (g = lane/4, q = lane%4) loads VB contiguous bf16 of rows g and g+8 of each
// m-tile for y and the n streams of x, computes x_next in f32, rounds and stores it, and uses the
// rounded values directly as TF32 A fragments of mma.sync m16n8k8: the reduction index may be
// permuted freely, so k-slot q of step s means column col + 2s and k-slot q+4 column col + 2s + 1,
// and the B fragments (fn rows g, g+8, g+16) are VB contiguous floats of fn at the same columns.
// No shared-memory tile of x_next, no block barrier in the loop: the warps run independently.
//
//   nvcc -O3 -arch=sm_90 -o post_proto bench/proto/post_proto.cu && ./post_proto
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <type_traits>
#include <vector>

#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) {                                                                    \
      printf("CUDA error %s (%s) at line %d\n", cudaGetErrorName(e_), cudaGetErrorString(e_),   \
             __LINE__);                                                                         \
      exit(1);                                                                                  \
    }                                                                                           \
  } while (0)

constexpr int N = 4, M = N * N + 2 * N, NT = (M + 7) / 8;

__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int VB> struct Vec;
template <> struct Vec<8> { using T = uint4; };
template <> struct Vec<4> { using T = uint2; };

template <int VB> __device__ __forceinline__ void unpack(const typename Vec<VB>::T &v, float *f) {
  const __nv_bfloat16 *h = reinterpret_cast<const __nv_bfloat16 *>(&v);
#pragma unroll
  for (int e = 0; e < VB; ++e) f[e] = __bfloat162float(h[e]);
}

// MT: m-tiles (16 tokens) per warp; VB: bf16 columns per thread and row; PF: prefetch the next
// group's loads; MMA: do the projection (false: post_res + sums of squares only, a bound).
__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
  unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(a), "l"(src));
}

// FNS: the block's 4 warps share the group's fn slice through shared memory (cp.async, two
// buffers, one barrier per group) instead of each warp reading it from L1/L2.
template <int MT, int VB, bool PF, bool MMA, int MINB, bool FNS = false>
__global__ void __launch_bounds__(128, MINB) post_kernel(int T, int C, const __nv_bfloat16 *__restrict__ y,
                                                   const __nv_bfloat16 *__restrict__ x,
                                                   const float *__restrict__ post,
                                                   const float *__restrict__ comb,
                                                   const float *__restrict__ fn, float eps,
                                                   __nv_bfloat16 *__restrict__ xn,
                                                   float *__restrict__ mix) {
  using V = typename Vec<VB>::T;
  constexpr int ROWS = 2 * MT, TOKW = 16 * MT, GW = 4 * VB;
  __shared__ float coef[4][TOKW][20];
  constexpr int FROW = N * GW + 4;  // padded: conflict-free 16-byte reads
  __shared__ __align__(16) float fns[FNS ? 2 : 1][FNS ? M : 1][FNS ? FROW : 1];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int tok0 = (blockIdx.x * 4 + warp) * TOKW;
  for (int i = lane; i < TOKW * 20; i += 32) {
    int r = i / 20, e = i % 20, tok = tok0 + r;
    float v = 0.f;
    if (tok < T) v = e < N ? post[tok * N + e] : comb[tok * N * N + e - N];
    coef[warp][r][e] = v;
  }
  __syncwarp();
  int tok[ROWS];
  bool ok[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    tok[r] = tok0 + (r / 2) * 16 + g + (r % 2) * 8;
    ok[r] = tok[r] < T;
  }
  const int K = N * C;
  float acc[MT][NT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[m][nt][e] = 0.f;
  float ss[ROWS] = {};

  V yv[ROWS], xv[ROWS][N];
  auto load = [&](int c0, V(&yo)[ROWS], V(&xo)[ROWS][N]) {
    int col = c0 + q * VB;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      bool in = ok[r] && col < C;
      yo[r] = in ? *reinterpret_cast<const V *>(y + (size_t)tok[r] * C + col) : V{};
#pragma unroll
      for (int i = 0; i < N; ++i)
        xo[r][i] = in ? *reinterpret_cast<const V *>(x + ((size_t)tok[r] * N + i) * C + col) : V{};
    }
  };
  auto stageFn = [&](int c0, int buf) {
    // M rows x N streams x GW columns, 16 bytes per copy.
    constexpr int per = GW / 4, total = M * N * per;
    for (int i = threadIdx.x; i < total; i += 128) {
      int row = i / (N * per), j = (i / per) % N, v = i % per;
      int col = c0 + v * 4;
      if (col < C) cp_async16(&fns[buf][row][j * GW + v * 4], fn + (size_t)row * K + (size_t)j * C + col);
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };
  if (FNS) stageFn(0, 0);
  load(0, yv, xv);
  for (int c0 = 0; c0 < C; c0 += GW) {
    const int buf = (c0 / GW) & 1;
    if (FNS) {
      asm volatile("cp.async.wait_group 0;\n" ::);
      __syncthreads();
      if (c0 + GW < C) stageFn(c0 + GW, buf ^ 1);
    }
    V yn[ROWS], xnx[ROWS][N];
    if (PF) load(c0 + GW, yn, xnx);
    const int col = c0 + q * VB;
    // One output stream at a time (not unrolled): bounds the live registers to the packed loads,
    // one stream's fn fragments and its x_next values.
#pragma unroll 1
    for (int j = 0; j < N; ++j) {
      // This stream's fn columns for the three n-tiles, issued before the arithmetic.
      float fb[NT][VB];
      if (MMA) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          int row = nt * 8 + g;
          const float *src = FNS ? &fns[buf][row < M ? row : 0][j * GW + q * VB]
                                 : fn + (size_t)row * K + (size_t)j * C + col;
#pragma unroll
          for (int e = 0; e < VB; e += 4) {
            float4 v = (row < M && col < C) ? *reinterpret_cast<const float4 *>(src + e)
                                            : make_float4(0, 0, 0, 0);
            fb[nt][e] = v.x, fb[nt][e + 1] = v.y, fb[nt][e + 2] = v.z, fb[nt][e + 3] = v.w;
          }
        }
      }
      float o[ROWS][VB];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const int lr = (r / 2) * 16 + g + (r % 2) * 8;
        float pj = coef[warp][lr][j];
        float cw[N];
#pragma unroll
        for (int i = 0; i < N; ++i) cw[i] = coef[warp][lr][N + i * N + j];
        __align__(16) __nv_bfloat16 ob[VB];
        const __nv_bfloat16 *yh = reinterpret_cast<const __nv_bfloat16 *>(&yv[r]);
#pragma unroll
        for (int e = 0; e < VB; ++e) {
          float v = pj * __bfloat162float(yh[e]);
#pragma unroll
          for (int i = 0; i < N; ++i)
            v = fmaf(cw[i], __bfloat162float(reinterpret_cast<const __nv_bfloat16 *>(&xv[r][i])[e]),
                     v);
          ob[e] = __float2bfloat16_rn(v);
          o[r][e] = __bfloat162float(ob[e]);
          ss[r] = fmaf(o[r][e], o[r][e], ss[r]);
        }
        if (ok[r] && col < C)
          *reinterpret_cast<V *>(xn + ((size_t)tok[r] * N + j) * C + col) =
              *reinterpret_cast<const V *>(ob);
      }
      if (MMA) {
#pragma unroll
        for (int s = 0; s < VB / 2; ++s) {
          uint32_t bh[NT][2], bl[NT][2];
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              float f = fb[nt][2 * s + e];
              uint32_t h = __float_as_uint(f) & 0xffffe000u;
              bh[nt][e] = h;
              bl[nt][e] = __float_as_uint(f - __uint_as_float(h));
            }
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            uint32_t a[4] = {__float_as_uint(o[2 * m][2 * s]), __float_as_uint(o[2 * m + 1][2 * s]),
                             __float_as_uint(o[2 * m][2 * s + 1]),
                             __float_as_uint(o[2 * m + 1][2 * s + 1])};
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
              mma(acc[m][nt], a, bl[nt][0], bl[nt][1]);
              mma(acc[m][nt], a, bh[nt][0], bh[nt][1]);
            }
          }
        }
      }
    }
    if (PF) {
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        yv[r] = yn[r];
#pragma unroll
        for (int i = 0; i < N; ++i) xv[r][i] = xnx[r][i];
      }
    } else if (c0 + GW < C) {
      load(c0 + GW, yv, xv);
    }
  }
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    ss[r] += __shfl_xor_sync(0xffffffffu, ss[r], 1);
    ss[r] += __shfl_xor_sync(0xffffffffu, ss[r], 2);
    ss[r] = rsqrtf(ss[r] / K + eps);
  }
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        int r = 2 * m + h, c = nt * 8 + 2 * q;
        if (!ok[r]) continue;
        float *dst = mix + (size_t)tok[r] * M + c;
        float v0 = acc[m][nt][2 * h] * ss[r], v1 = acc[m][nt][2 * h + 1] * ss[r];
        if (!MMA) v0 = v1 = ss[r];
        if (c < M) dst[0] = v0;
        if (c + 1 < M) dst[1] = v1;
      }
}

// A plain streaming post_res (no projection): 256 threads, 8 bf16 per thread, 4 in flight.
__global__ void __launch_bounds__(256) post_res_stream(int T, int C, const __nv_bfloat16 *y,
                                                       const __nv_bfloat16 *x, const float *post,
                                                       const float *comb, __nv_bfloat16 *xn) {
  long nv = (long)T * C / 8;
  for (long v = blockIdx.x * 256L + threadIdx.x; v < nv; v += (long)gridDim.x * 256) {
    long t = v / (C / 8), c = (v % (C / 8)) * 8;
    float yf[8], xf[N][8];
    unpack<8>(*reinterpret_cast<const uint4 *>(y + t * C + c), yf);
    for (int i = 0; i < N; ++i)
      unpack<8>(*reinterpret_cast<const uint4 *>(x + (t * N + i) * C + c), xf[i]);
    for (int j = 0; j < N; ++j) {
      __align__(16) __nv_bfloat16 ob[8];
      for (int e = 0; e < 8; ++e) {
        float o = post[t * N + j] * yf[e];
        for (int i = 0; i < N; ++i) o = fmaf(comb[t * N * N + i * N + j], xf[i][e], o);
        ob[e] = __float2bfloat16_rn(o);
      }
      *reinterpret_cast<uint4 *>(xn + (t * N + j) * C + c) = *reinterpret_cast<uint4 *>(ob);
    }
  }
}

// Access-pattern probe: post_res only; a block owns TT tokens and walks C in chunks of CW columns
// (2*CW contiguous bytes of each row per chunk), all of a chunk's loads issued before use.
template <int TT, int CW>
__global__ void __launch_bounds__(256) post_res_tiles(int T, int C, const __nv_bfloat16 *y,
                                                      const __nv_bfloat16 *x, const float *post,
                                                      const float *comb, __nv_bfloat16 *xn) {
  constexpr int NV = CW / 8, ITEMS = TT * NV, R = (ITEMS + 255) / 256;
  __shared__ float cs[TT][20];
  int t0 = blockIdx.x * TT;
  for (int i = threadIdx.x; i < TT * 20; i += 256) {
    int r = i / 20, e = i % 20, t = t0 + r;
    cs[r][e] = t < T ? (e < N ? post[t * N + e] : comb[t * N * N + e - N]) : 0.f;
  }
  __syncthreads();
  for (int c0 = 0; c0 < C; c0 += CW) {
    uint4 yv[R], xv[R][N];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      int it = threadIdx.x + r * 256, tl = it / NV, c = c0 + (it % NV) * 8;
      long t = t0 + tl;
      bool ok = it < ITEMS && t < T && c < C;
      yv[r] = ok ? *reinterpret_cast<const uint4 *>(y + t * C + c) : uint4{};
#pragma unroll
      for (int i = 0; i < N; ++i)
        xv[r][i] = ok ? *reinterpret_cast<const uint4 *>(x + (t * N + i) * C + c) : uint4{};
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      int it = threadIdx.x + r * 256, tl = it / NV, c = c0 + (it % NV) * 8;
      long t = t0 + tl;
      if (!(it < ITEMS && t < T && c < C)) continue;
      float yf[8], xf[N][8];
      unpack<8>(yv[r], yf);
      for (int i = 0; i < N; ++i) unpack<8>(xv[r][i], xf[i]);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        __align__(16) __nv_bfloat16 ob[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          float o = cs[tl][j] * yf[e];
#pragma unroll
          for (int i = 0; i < N; ++i) o = fmaf(cs[tl][N + i * N + j], xf[i][e], o);
          ob[e] = __float2bfloat16_rn(o);
        }
        *reinterpret_cast<uint4 *>(xn + (t * N + j) * C + c) = *reinterpret_cast<uint4 *>(ob);
      }
    }
  }
}

static float bf(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static uint16_t tobf(float f) {  // round to nearest even
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return uint16_t(u >> 16);
}

struct Bufs {
  int T, C;
  __nv_bfloat16 *y, *x, *xn;
  float *post, *comb, *fn, *mix;
  std::vector<uint16_t> hy, hx;
  std::vector<float> hpost, hcomb, hfn;
};

static Bufs make(int T, int C, unsigned seed) {
  Bufs b{T, C};
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_real_distribution<float> ud(0.f, 1.f);
  b.hy.resize((size_t)T * C);
  b.hx.resize((size_t)T * N * C);
  for (auto &v : b.hy) v = tobf(nd(rng));
  for (auto &v : b.hx) v = tobf(nd(rng));
  b.hpost.resize((size_t)T * N);
  b.hcomb.resize((size_t)T * N * N);
  for (auto &v : b.hpost) v = 2.f * ud(rng);
  for (auto &v : b.hcomb) v = ud(rng) * 0.5f;
  b.hfn.resize((size_t)M * N * C);
  for (auto &v : b.hfn) v = 0.02f * nd(rng);
  CK(cudaMalloc(&b.y, b.hy.size() * 2));
  CK(cudaMalloc(&b.x, b.hx.size() * 2));
  CK(cudaMalloc(&b.xn, b.hx.size() * 2));
  CK(cudaMalloc(&b.post, b.hpost.size() * 4));
  CK(cudaMalloc(&b.comb, b.hcomb.size() * 4));
  CK(cudaMalloc(&b.fn, b.hfn.size() * 4));
  CK(cudaMalloc(&b.mix, (size_t)T * M * 4));
  CK(cudaMemcpy(b.y, b.hy.data(), b.hy.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(b.x, b.hx.data(), b.hx.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(b.post, b.hpost.data(), b.hpost.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(b.comb, b.hcomb.data(), b.hcomb.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(b.fn, b.hfn.data(), b.hfn.size() * 4, cudaMemcpyHostToDevice));
  return b;
}

// Max relative errors of x_next (vs the bf16-rounded reference) and mix (vs float64 on the
// rounded x_next) over sampled tokens.
static void check(const Bufs &b, bool mma, double &exn, double &emix) {
  int T = b.T, C = b.C, K = N * C;
  std::vector<uint16_t> xn((size_t)T * N * C);
  std::vector<float> mix((size_t)T * M);
  CK(cudaMemcpy(xn.data(), b.xn, xn.size() * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(mix.data(), b.mix, mix.size() * 4, cudaMemcpyDeviceToHost));
  double numx = 0, denx = 0, numm = 0, denm = 0;
  for (int s = 0; s < 97; ++s) {
    int t = s == 0 ? 0 : s == 1 ? T - 1 : (int)((long)s * 7919 % T);
    std::vector<double> r(K);
    for (int j = 0; j < N; ++j)
      for (int c = 0; c < C; ++c) {
        double v = b.hpost[t * N + j] * (double)bf(b.hy[(size_t)t * C + c]);
        for (int i = 0; i < N; ++i)
          v += b.hcomb[t * N * N + i * N + j] * (double)bf(b.hx[((size_t)t * N + i) * C + c]);
        double got = bf(xn[((size_t)t * N + j) * C + c]);
        numx += (got - v) * (got - v);
        denx += v * v;
        r[j * C + c] = got;
      }
    double ssq = 0;
    for (double v : r) ssq += v * v;
    double rn = 1.0 / std::sqrt(ssq / K + 1e-6);
    for (int m = 0; m < M; ++m) {
      double d = 0;
      for (int k = 0; k < K; ++k) d += r[k] * b.hfn[(size_t)m * K + k];
      double ref = mma ? d * rn : rn;
      double got = mix[(size_t)t * M + m];
      numm += (got - ref) * (got - ref);
      denm += ref * ref;
    }
  }
  exn = std::sqrt(numx / denx);
  emix = std::sqrt(numm / denm);
}

template <typename F> static double time_ms(F launch, int iters = 40) {
  for (int i = 0; i < 5; ++i) launch();
  CK(cudaDeviceSynchronize());
  std::vector<float> ts;
  cudaEvent_t a, z;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&z));
  for (int i = 0; i < iters; ++i) {
    CK(cudaEventRecord(a));
    launch();
    CK(cudaEventRecord(z));
    CK(cudaEventSynchronize(z));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, z));
    ts.push_back(ms);
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

template <int MT, int VB, bool PF, bool MMA, int MINB = 1, bool FNS = false>
static void run(const char *name, Bufs &b, double copyGBps) {
  auto k = post_kernel<MT, VB, PF, MMA, MINB, FNS>;
  cudaFuncAttributes fa;
  CK(cudaFuncGetAttributes(&fa, k));
  int perSM = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSM, k, 128, 0));
  int tokPerBlock = 4 * 16 * MT;
  int grid = (b.T + tokPerBlock - 1) / tokPerBlock;
  auto launch = [&] {
    k<<<grid, 128>>>(b.T, b.C, b.y, b.x, b.post, b.comb, b.fn, 1e-6f, b.xn, b.mix);
  };
  CK(cudaMemset(b.xn, 0xff, (size_t)b.T * N * b.C * 2));  // NaN poison
  CK(cudaMemset(b.mix, 0xff, (size_t)b.T * M * 4));
  launch();
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  double exn, emix;
  check(b, MMA, exn, emix);
  double ms = time_ms(launch);
  double bytes = (double)b.T * b.C * (2 * N + 1) * 2;
  double frac = bytes / (ms * 1e-3) / 1e9 / copyGBps;
  printf("%-28s C=%5d regs=%3d blocks/SM=%2d  %.4f ms  %5.1f%% of copy  err xn %.2e mix %.2e\n",
         name, b.C, fa.numRegs, perSM, ms, 100 * frac, exn, emix);
}

template <int TT, int CW> static void runTiles(Bufs &b, double copyGBps) {
  auto k = post_res_tiles<TT, CW>;
  cudaFuncAttributes fa;
  CK(cudaFuncGetAttributes(&fa, k));
  int perSM = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSM, k, 256, 0));
  int grid = (b.T + TT - 1) / TT;
  auto launch = [&] { k<<<grid, 256>>>(b.T, b.C, b.y, b.x, b.post, b.comb, b.xn); };
  CK(cudaMemset(b.xn, 0xff, (size_t)b.T * N * b.C * 2));
  launch();
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  double exn, emix;
  check(b, false, exn, emix);
  double ms = time_ms(launch);
  double bytes = (double)b.T * b.C * (2 * N + 1) * 2;
  printf("tiles TT=%3d row run %4d B   C=%5d regs=%3d blocks/SM=%2d  %.4f ms  %5.1f%% of copy  err xn %.2e\n",
         TT, 2 * CW, b.C, fa.numRegs, perSM, ms, 100 * bytes / (ms * 1e-3) / 1e9 / copyGBps, exn);
}


// Design Y: wide chunks through a bf16 shared tile. A block owns TT tokens and walks C in chunks of
// CC columns (2*CC contiguous bytes per row: the access-pattern probe says >= 256 B). Threads load
// 16-byte vectors in streaming order, store x_next and put it (exact) into a bf16 tile [TT x n*CC];
// after a barrier the warps split the chunk's k16 steps, A fragments by ldmatrix, B = fn split into
// bf16 hi + lo (m16n8k16 bf16 mma, f32 accumulation), fn read from L2 once per block and chunk.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void split2(float2 f, uint32_t &hi, uint32_t &lo) {
  __nv_bfloat162 h = __floats2bfloat162_rn(f.x, f.y);
  float2 hf = __bfloat1622float2(h);
  __nv_bfloat162 l = __floats2bfloat162_rn(f.x - hf.x, f.y - hf.y);
  hi = *reinterpret_cast<uint32_t *>(&h);
  lo = *reinterpret_cast<uint32_t *>(&l);
}


// Design Y. G > 1: G independent groups of WARPS warps per block, one token tile each, synchronised
// by named barriers: the groups start together and walk the same chunks, so fn is shared through
// L1. G = 1: one tile per block, __syncthreads. MODE: 0 = as described; 1 = no products; 2 = products
// with fn from registers (no fn traffic); 3 = the next chunk's first batch loaded before the
// products; 4 = fn slice staged in shared memory by cp.async; 5 = the same by bulk copies.
template <int TT, int CC, int WARPS, int BATCH, int MINB, int UNR, int MODE, int G, int SE>
__global__ void __launch_bounds__(G * WARPS * 32, MINB) post_y(int T, int C, const __nv_bfloat16 *__restrict__ y,
                                                     const __nv_bfloat16 *__restrict__ x,
                                                     const float *__restrict__ post,
                                                     const float *__restrict__ comb,
                                                     const float *__restrict__ fn, float eps,
                                                     __nv_bfloat16 *__restrict__ xn,
                                                     float *__restrict__ mix) {
  constexpr int TH = WARPS * 32, KCH = N * CC, LDA = KCH + 8, NV = CC / 8;
  constexpr int ITEMS = TT * NV, R = ITEMS / TH, MT = TT / 16;
  static_assert(ITEMS % TH == 0 && R % BATCH == 0, "geometry");
  extern __shared__ __align__(16) unsigned char dynAll[];
  const int grp = threadIdx.x / (WARPS * 32);
  unsigned char *dyn = dynAll + grp * (TT * LDA * 2);
  auto gsync = [&] {
    if constexpr (G == 1)
      __syncthreads();
    else
      asm volatile("bar.sync %0, %1;\n" ::"r"(1 + grp), "r"(WARPS * 32) : "memory");
  };
  __nv_bfloat16 *A = reinterpret_cast<__nv_bfloat16 *>(dyn);
  __shared__ float csAll[G][TT][20];
  __shared__ float ssAll[G][TT];
  auto &cs = csAll[grp];
  auto &ssTok = ssAll[grp];
  const int tid = threadIdx.x % (WARPS * 32), warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int t0 = (blockIdx.x * G + grp) * TT, K = N * C;
  for (int i = tid; i < TT * 20; i += TH) {
    int r = i / 20, e = i % 20, t = t0 + r;
    cs[r][e] = t < T ? (e < N ? post[t * N + e] : comb[t * N * N + e - N]) : 0.f;
  }
  gsync();
  float acc[MT][NT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[m][nt][e] = 0.f;
  float ss[R] = {};
  uint4 pyv[BATCH], pxv[BATCH][N];  // MODE 3: the first batch of the next chunk, loaded early
  auto loadBatch = [&](int c0, int rb, uint4 (&yv)[BATCH], uint4 (&xv)[BATCH][N]) {
#pragma unroll
    for (int u = 0; u < BATCH; ++u) {
      int it = tid + (rb + u) * TH, tl = it / NV, c = c0 + (it % NV) * 8;
      long t = t0 + tl;
      bool ok = t < T && c < C;
      yv[u] = ok ? *reinterpret_cast<const uint4 *>(y + t * C + c) : uint4{};
#pragma unroll
      for (int i = 0; i < N; ++i)
        xv[u][i] = ok ? *reinterpret_cast<const uint4 *>(x + (t * N + i) * C + c) : uint4{};
    }
  };
  if (MODE == 3) loadBatch(0, 0, pyv, pxv);
  constexpr int LDF = KCH + 8;  // fn slice row, padded: two wavefronts per 8-byte warp read
  float *fnS = reinterpret_cast<float *>(dyn + TT * LDA * 2);
  __shared__ __align__(8) unsigned long long fnBar;
  const unsigned barA = static_cast<unsigned>(__cvta_generic_to_shared(&fnBar));
  if (MODE == 5) {
    if (tid == 0) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(barA));
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::);
    }
    gsync();
  }
  unsigned phase = 0;
  for (int c0 = 0; c0 < C; c0 += CC) {
    // SE: every SE chunks all groups meet (keeps their fn reads close together in L1).
    if (SE && (c0 / CC) % SE == 0) __syncthreads();
    if (MODE == 5 && warp == 0) {
      // Bulk copies (copy engine): M x n rows of CC floats, one mbarrier transaction count.
      int cw = min(CC, C - c0);
      if (lane == 0)
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(barA),
                     "r"(M * N * cw * 4));
      __syncwarp();
      for (int i = lane; i < M * N; i += 32) {
        int row = i / N, j = i % N;
        unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(fnS + row * LDF + j * CC));
        asm volatile(
            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
            "l"(fn + (size_t)row * K + (size_t)j * C + c0), "r"(cw * 4), "r"(barA)
            : "memory");
      }
    }
    if (MODE == 4) {
      // The chunk's fn columns [M x n*CC] (16-byte copies), in flight during the load phase.
      constexpr int PER = CC / 4;
      for (int i = tid; i < M * N * PER; i += TH) {
        int row = i / (N * PER), j = (i / PER) % N, v = i % PER, col = c0 + v * 4;
        if (col < C) cp_async16(fnS + row * LDF + j * CC + v * 4, fn + (size_t)row * K + (size_t)j * C + col);
      }
      asm volatile("cp.async.commit_group;\n" ::);
    }
#pragma unroll 1
    for (int rb = 0; rb < R; rb += BATCH) {
      uint4 yv[BATCH], xv[BATCH][N];
      float ssum[BATCH] = {};
      if (MODE == 3 && rb == 0) {
#pragma unroll
        for (int u = 0; u < BATCH; ++u) {
          yv[u] = pyv[u];
#pragma unroll
          for (int i = 0; i < N; ++i) xv[u][i] = pxv[u][i];
        }
      } else {
        loadBatch(c0, rb, yv, xv);
      }
#pragma unroll
      for (int u = 0; u < BATCH; ++u) {
        int it = tid + (rb + u) * TH, tl = it / NV, cl = (it % NV) * 8, c = c0 + cl;
        long t = t0 + tl;
        bool ok = t < T && c < C;
        const __nv_bfloat16 *yh = reinterpret_cast<const __nv_bfloat16 *>(&yv[u]);
#pragma unroll
        for (int j = 0; j < N; ++j) {
          __align__(16) __nv_bfloat16 ob[8];
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            float o = cs[tl][j] * __bfloat162float(yh[e]);
#pragma unroll
            for (int i = 0; i < N; ++i)
              o = fmaf(cs[tl][N + i * N + j],
                       __bfloat162float(reinterpret_cast<const __nv_bfloat16 *>(&xv[u][i])[e]), o);
            ob[e] = __float2bfloat16_rn(o);
            float r = __bfloat162float(ob[e]);
            ssum[u] = fmaf(r, r, ssum[u]);
          }
          if (ok)
            *reinterpret_cast<uint4 *>(xn + (t * N + j) * C + c) = *reinterpret_cast<uint4 *>(ob);
          *reinterpret_cast<uint4 *>(A + tl * LDA + j * CC + cl) = *reinterpret_cast<uint4 *>(ob);
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (r / BATCH == rb / BATCH) ss[r] += ssum[r % BATCH];
    }
    if (MODE == 3 && c0 + CC < C) loadBatch(c0 + CC, 0, pyv, pxv);
    if (MODE == 4) asm volatile("cp.async.wait_group 0;\n" ::);
    if (MODE == 5) {
      unsigned done = 0;
      while (!done)
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(barA), "r"(phase) : "memory");
      phase ^= 1;
    }
    gsync();
#pragma unroll UNR
    for (int s0 = 0; s0 < KCH / 16; s0 += WARPS) {
      if (MODE == 1) break;
      int s = s0 + warp;
      if (KCH / 16 % WARPS != 0 && s >= KCH / 16) break;
      int k0 = s * 16, i = k0 / CC, kg = i * C + c0 + k0 % CC;
      uint32_t bh[NT][2], bl[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        int row = nt * 8 + g;
        const float *src = fn + (size_t)row * K + kg + 2 * q;
        float2 f0, f1;
        if (MODE == 2) {
          f0 = make_float2(0.01f * row, 0.02f * q), f1 = make_float2(0.03f * s, 0.01f);
        } else if (MODE == 4 || MODE == 5) {
          const float *fs = fnS + (row < M ? row : 0) * LDF + k0 + 2 * q;
          f0 = row < M ? *reinterpret_cast<const float2 *>(fs) : make_float2(0, 0);
          f1 = row < M ? *reinterpret_cast<const float2 *>(fs + 8) : make_float2(0, 0);
        } else {
          f0 = row < M ? *reinterpret_cast<const float2 *>(src) : make_float2(0, 0);
          f1 = row < M ? *reinterpret_cast<const float2 *>(src + 8) : make_float2(0, 0);
        }
        split2(f0, bh[nt][0], bl[nt][0]);
        split2(f1, bh[nt][1], bl[nt][1]);
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        uint32_t a[4];
        const __nv_bfloat16 *pa = A + (m * 16 + lane % 16) * LDA + k0 + (lane / 16) * 8;
        unsigned sa = static_cast<unsigned>(__cvta_generic_to_shared(pa));
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                     : "r"(sa));
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          mma_bf16(acc[m][nt], a, bl[nt][0], bl[nt][1]);
          mma_bf16(acc[m][nt], a, bh[nt][0], bh[nt][1]);
        }
      }
    }
    gsync();
    if (MODE == 5) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  }
  // Sums of squares: the NV threads of a token row are consecutive lanes.
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float v = ss[r];
#pragma unroll
    for (int off = NV / 2; off >= 1; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    int it = tid + r * TH;
    if (it % NV == 0) ssTok[it / NV] = v;
  }
  // Partial products of the warps, summed through shared memory (the tile is free now).
  float *red = reinterpret_cast<float *>(dyn);
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int row = m * 16 + g + (e / 2) * 8, col = nt * 8 + 2 * q + e % 2;
        if (col < M) red[(warp * TT + row) * M + col] = acc[m][nt][e];
      }
  gsync();
  for (int i = tid; i < TT * M; i += TH) {
    int tl = i / M;
    if (t0 + tl >= T) continue;
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) v += red[w * TT * M + i];
    mix[(size_t)t0 * M + i] = v * rsqrtf(ssTok[tl] / K + eps);
  }
}

template <int TT, int CC, int WARPS, int BATCH, int MINB = 1, int UNR = 1, int MODE = 0> static void runY(Bufs &b, double copyGBps) {
  auto k = post_y<TT, CC, WARPS, BATCH, MINB, UNR, MODE, 1, 0>;
  constexpr int LDA = N * CC + 8;
  int smem = std::max(TT * LDA * 2 + (MODE >= 4 ? M * (N * CC + 8) * 4 : 0), WARPS * TT * M * 4);
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  cudaFuncAttributes fa;
  CK(cudaFuncGetAttributes(&fa, k));
  int perSM = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSM, k, WARPS * 32, smem));
  int grid = (b.T + TT - 1) / TT;
  auto launch = [&] {
    k<<<grid, WARPS * 32, smem>>>(b.T, b.C, b.y, b.x, b.post, b.comb, b.fn, 1e-6f, b.xn, b.mix);
  };
  CK(cudaMemset(b.xn, 0xff, (size_t)b.T * N * b.C * 2));
  CK(cudaMemset(b.mix, 0xff, (size_t)b.T * M * 4));
  launch();
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  double exn, emix;
  check(b, true, exn, emix);
  double ms = time_ms(launch);
  double bytes = (double)b.T * b.C * (2 * N + 1) * 2;
  printf("Y%d TT=%2d run %4dB warps=%d batch=%d minb=%d unr=%d C=%5d regs=%3d smem=%6d blocks/SM=%d  %.4f ms  %5.1f%% of copy  err xn %.2e mix %.2e\n",
         MODE, TT, 2 * CC, WARPS, BATCH, MINB, UNR, b.C, fa.numRegs, smem, perSM, ms,
         100 * bytes / (ms * 1e-3) / 1e9 / copyGBps, exn, emix);
}

template <int TT, int CC, int WARPS, int BATCH, int MINB, int UNR, int MODE, int G, int SE = 0> static void runYG(Bufs &b, double copyGBps) {
  auto k = post_y<TT, CC, WARPS, BATCH, MINB, UNR, MODE, G, SE>;
  constexpr int LDA = N * CC + 8;
  int smem = G * std::max(TT * LDA * 2, WARPS * TT * M * 4);
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  cudaFuncAttributes fa;
  CK(cudaFuncGetAttributes(&fa, k));
  int perSM = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSM, k, G * WARPS * 32, smem));
  int grid = (b.T + G * TT - 1) / (G * TT);
  auto launch = [&] {
    k<<<grid, G * WARPS * 32, smem>>>(b.T, b.C, b.y, b.x, b.post, b.comb, b.fn, 1e-6f, b.xn, b.mix);
  };
  CK(cudaMemset(b.xn, 0xff, (size_t)b.T * N * b.C * 2));
  CK(cudaMemset(b.mix, 0xff, (size_t)b.T * M * 4));
  launch();
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  double exn, emix;
  check(b, true, exn, emix);
  double ms = time_ms(launch);
  double bytes = (double)b.T * b.C * (2 * N + 1) * 2;
  printf("YG%d G=%d SE=%d TT=%2d run %4dB warps=%d batch=%d minb=%d unr=%d C=%5d regs=%3d smem=%6d blocks/SM=%d  %.4f ms  %5.1f%% of copy  err xn %.2e mix %.2e\n",
         MODE, G, SE, TT, 2 * CC, WARPS, BATCH, MINB, UNR, b.C, fa.numRegs, smem, perSM, ms,
         100 * bytes / (ms * 1e-3) / 1e9 / copyGBps, exn, emix);
}

// Design Z: Y plus a cp.async staging ring for the inputs. Each thread copies its own items' y and
// x vectors of chunk k+S-1 into shared memory while it computes chunk k from the copies it made
// S-1 chunks earlier (thread-private slots: no barrier for them), so the loads stay in flight
// through the barrier and the tensor-core phase. FNP: the next chunk's fn fragments are loaded
// into registers before this chunk's products.
template <int TT, int CC, int WARPS, int S, int MINB, bool FNP>
__global__ void __launch_bounds__(WARPS * 32, MINB) post_z(int T, int C, const __nv_bfloat16 *__restrict__ y,
                                                     const __nv_bfloat16 *__restrict__ x,
                                                     const float *__restrict__ post,
                                                     const float *__restrict__ comb,
                                                     const float *__restrict__ fn, float eps,
                                                     __nv_bfloat16 *__restrict__ xn,
                                                     float *__restrict__ mix) {
  constexpr int TH = WARPS * 32, KCH = N * CC, LDA = KCH + 8, NV = CC / 8;
  constexpr int ITEMS = TT * NV, R = ITEMS / TH, MT = TT / 16, STEPS = KCH / 16 / WARPS;
  static_assert(ITEMS % TH == 0 && (KCH / 16) % WARPS == 0, "geometry");
  extern __shared__ __align__(16) unsigned char dyn[];
  __nv_bfloat16 *A = reinterpret_cast<__nv_bfloat16 *>(dyn);
  uint4 *stage = reinterpret_cast<uint4 *>(dyn + TT * LDA * 2);  // [S][R][N+1][TH]
  __shared__ float cs[TT][20];
  __shared__ float ssTok[TT];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int t0 = blockIdx.x * TT, K = N * C;
  for (int i = tid; i < TT * 20; i += TH) {
    int r = i / 20, e = i % 20, t = t0 + r;
    cs[r][e] = t < T ? (e < N ? post[t * N + e] : comb[t * N * N + e - N]) : 0.f;
  }
  auto slot = [&](int st, int r, int v) -> uint4 * { return stage + ((st * R + r) * (N + 1) + v) * TH + tid; };
  auto issue = [&](int c0, int st) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      int it = tid + r * TH, tl = it / NV, c = c0 + (it % NV) * 8;
      long t = t0 + tl;
      if (t < T && c < C) {
        cp_async16(slot(st, r, 0), y + t * C + c);
#pragma unroll
        for (int i = 0; i < N; ++i) cp_async16(slot(st, r, 1 + i), x + (t * N + i) * C + c);
      }
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };
  const int nChunks = (C + CC - 1) / CC;
#pragma unroll
  for (int st = 0; st < S - 1; ++st)
    if (st < nChunks) issue(st * CC, st); else asm volatile("cp.async.commit_group;\n" ::);
  __syncthreads();
  float acc[MT][NT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[m][nt][e] = 0.f;
  float ss[R] = {};
  float2 fb[FNP ? STEPS : 1][NT][2];
  auto loadFn = [&](int c0, int si, float2 (&f)[NT][2]) {
    int k0 = (si * WARPS + warp) * 16, i = k0 / CC, kg = i * C + c0 + k0 % CC;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      int row = nt * 8 + g;
      const float *src = fn + (size_t)row * K + kg + 2 * q;
      bool ok = row < M && c0 + k0 % CC < C;
      f[nt][0] = ok ? *reinterpret_cast<const float2 *>(src) : make_float2(0, 0);
      f[nt][1] = ok ? *reinterpret_cast<const float2 *>(src + 8) : make_float2(0, 0);
    }
  };
  if (FNP)
#pragma unroll
    for (int si = 0; si < STEPS; ++si) loadFn(0, si, fb[si]);
  for (int k = 0; k < nChunks; ++k) {
    const int c0 = k * CC, st = k % S;
    asm volatile("cp.async.wait_group %0;\n" ::"n"(S - 2));
#pragma unroll
    for (int r = 0; r < R; ++r) {
      int it = tid + r * TH, tl = it / NV, cl = (it % NV) * 8, c = c0 + cl;
      long t = t0 + tl;
      bool ok = t < T && c < C;
      uint4 yv = *slot(st, r, 0), xv[N];
#pragma unroll
      for (int i = 0; i < N; ++i) xv[i] = *slot(st, r, 1 + i);
      if (!ok) {
        yv = uint4{};
#pragma unroll
        for (int i = 0; i < N; ++i) xv[i] = uint4{};
      }
      const __nv_bfloat16 *yh = reinterpret_cast<const __nv_bfloat16 *>(&yv);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        __align__(16) __nv_bfloat16 ob[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          float o = cs[tl][j] * __bfloat162float(yh[e]);
#pragma unroll
          for (int i = 0; i < N; ++i)
            o = fmaf(cs[tl][N + i * N + j],
                     __bfloat162float(reinterpret_cast<const __nv_bfloat16 *>(&xv[i])[e]), o);
          ob[e] = __float2bfloat16_rn(o);
          float rr = __bfloat162float(ob[e]);
          ss[r] = fmaf(rr, rr, ss[r]);
        }
        if (ok)
          *reinterpret_cast<uint4 *>(xn + (t * N + j) * C + c) = *reinterpret_cast<uint4 *>(ob);
        *reinterpret_cast<uint4 *>(A + tl * LDA + j * CC + cl) = *reinterpret_cast<uint4 *>(ob);
      }
    }
    // Own slots of chunk k are consumed: refill them with chunk k + S - 1.
    if (k + S - 1 < nChunks) issue((k + S - 1) * CC, (k + S - 1) % S);
    else asm volatile("cp.async.commit_group;\n" ::);
    __syncthreads();
#pragma unroll
    for (int si = 0; si < STEPS; ++si) {
      int k0 = (si * WARPS + warp) * 16;
      float2 f[NT][2];
      if (FNP) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) f[nt][0] = fb[si][nt][0], f[nt][1] = fb[si][nt][1];
        if (k + 1 < nChunks) loadFn(c0 + CC, si, fb[si]);
      } else {
        loadFn(c0, si, f);
      }
      uint32_t bh[NT][2], bl[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        split2(f[nt][0], bh[nt][0], bl[nt][0]);
        split2(f[nt][1], bh[nt][1], bl[nt][1]);
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        uint32_t a[4];
        const __nv_bfloat16 *pa = A + (m * 16 + lane % 16) * LDA + k0 + (lane / 16) * 8;
        unsigned sa = static_cast<unsigned>(__cvta_generic_to_shared(pa));
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                     : "r"(sa));
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          mma_bf16(acc[m][nt], a, bl[nt][0], bl[nt][1]);
          mma_bf16(acc[m][nt], a, bh[nt][0], bh[nt][1]);
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float v = ss[r];
#pragma unroll
    for (int off = NV / 2; off >= 1; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    int it = tid + r * TH;
    if (it % NV == 0) ssTok[it / NV] = v;
  }
  float *red = reinterpret_cast<float *>(dyn);
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int row = m * 16 + g + (e / 2) * 8, col = nt * 8 + 2 * q + e % 2;
        if (col < M) red[(warp * TT + row) * M + col] = acc[m][nt][e];
      }
  __syncthreads();
  for (int i = tid; i < TT * M; i += TH) {
    int tl = i / M;
    if (t0 + tl >= T) continue;
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) v += red[w * TT * M + i];
    mix[(size_t)t0 * M + i] = v * rsqrtf(ssTok[tl] / K + eps);
  }
}

template <int TT, int CC, int WARPS, int S, int MINB, bool FNP> static void runZ(Bufs &b, double copyGBps) {
  auto k = post_z<TT, CC, WARPS, S, MINB, FNP>;
  constexpr int LDA = N * CC + 8, TH = WARPS * 32, R = TT * (CC / 8) / TH;
  int smem = std::max(TT * LDA * 2 + S * R * (N + 1) * TH * 16, WARPS * TT * M * 4);
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  cudaFuncAttributes fa;
  CK(cudaFuncGetAttributes(&fa, k));
  int perSM = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSM, k, TH, smem));
  int grid = (b.T + TT - 1) / TT;
  auto launch = [&] {
    k<<<grid, TH, smem>>>(b.T, b.C, b.y, b.x, b.post, b.comb, b.fn, 1e-6f, b.xn, b.mix);
  };
  CK(cudaMemset(b.xn, 0xff, (size_t)b.T * N * b.C * 2));
  CK(cudaMemset(b.mix, 0xff, (size_t)b.T * M * 4));
  launch();
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  double exn, emix;
  check(b, true, exn, emix);
  double ms = time_ms(launch);
  double bytes = (double)b.T * b.C * (2 * N + 1) * 2;
  printf("Z TT=%2d run %4dB warps=%d stages=%d minb=%d fnp=%d C=%5d regs=%3d smem=%6d blocks/SM=%d  %.4f ms  %5.1f%% of copy  err xn %.2e mix %.2e\n",
         TT, 2 * CC, WARPS, S, MINB, FNP, b.C, fa.numRegs, smem, perSM, ms,
         100 * bytes / (ms * 1e-3) / 1e9 / copyGBps, exn, emix);
}

// Design SK (split-K, fn resident): block (s, g) owns the K-slice of CW columns (all n streams) and
// keeps fn for it in shared memory, pre-split into bf16 hi/lo pairs, for the whole kernel; it walks
// token tiles g, g+G, ... (grid-stride: any T). Per tile: streaming loads of [TT x CW] per row
// (2*CW-byte runs), x_next stored + put into the bf16 tile, barrier, warps split the slice's k16
// steps, partial products summed across warps and written with the partial sums of squares to a
// workspace [S][T][M+1]; a second small kernel adds the S partials and normalises.
template <int TT, int CW, int WARPS, int BATCH, int MINB>
__global__ void __launch_bounds__(WARPS * 32, MINB) post_sk(int T, int C, const __nv_bfloat16 *__restrict__ y,
                                                      const __nv_bfloat16 *__restrict__ x,
                                                      const float *__restrict__ post,
                                                      const float *__restrict__ comb,
                                                      const float *__restrict__ fn,
                                                      __nv_bfloat16 *__restrict__ xn,
                                                      float *__restrict__ ws) {
  constexpr int TH = WARPS * 32, KCH = N * CW, LDA = KCH + 8, NV = CW / 8;
  constexpr int ITEMS = TT * NV, R = ITEMS / TH, MT = TT / 16, STEPS = KCH / 16;
  constexpr int LDP = KCH / 2 + 4;  // uint2 {hi, lo} per k pair; padded row
  static_assert(ITEMS % TH == 0 && R % BATCH == 0 && STEPS % WARPS == 0, "geometry");
  extern __shared__ __align__(16) unsigned char dyn[];
  uint2 *fnP = reinterpret_cast<uint2 *>(dyn);                       // [M][LDP]
  __nv_bfloat16 *A = reinterpret_cast<__nv_bfloat16 *>(dyn + M * LDP * 8);  // [TT][LDA]
  float *red = reinterpret_cast<float *>(A);                          // reused after the products
  __shared__ float cs[TT][20];
  __shared__ float ssTok[TT];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int sl = blockIdx.x, S = gridDim.x, K = N * C, cbase = sl * CW;
  // fn slice: M rows x n streams x CW columns, split once.
  for (int i = tid; i < M * KCH / 2; i += TH) {
    int row = i / (KCH / 2), p = i % (KCH / 2), k = 2 * p, j = k / CW, c = cbase + k % CW;
    float2 f = c < C ? *reinterpret_cast<const float2 *>(fn + (size_t)row * K + (size_t)j * C + c)
                     : make_float2(0, 0);
    uint32_t hi, lo;
    split2(f, hi, lo);
    fnP[row * LDP + p] = make_uint2(hi, lo);
  }
  const int numTiles = (T + TT - 1) / TT;
  for (int tile = blockIdx.y; tile < numTiles; tile += gridDim.y) {
    const int t0 = tile * TT;
    for (int i = tid; i < TT * 20; i += TH) {
      int r = i / 20, e = i % 20, t = t0 + r;
      cs[r][e] = t < T ? (e < N ? post[t * N + e] : comb[t * N * N + e - N]) : 0.f;
    }
    __syncthreads();
    float ss[R] = {};
#pragma unroll 1
    for (int rb = 0; rb < R; rb += BATCH) {
      uint4 yv[BATCH], xv[BATCH][N];
#pragma unroll
      for (int u = 0; u < BATCH; ++u) {
        int it = tid + (rb + u) * TH, tl = it / NV, c = cbase + (it % NV) * 8;
        long t = t0 + tl;
        bool ok = t < T && c < C;
        yv[u] = ok ? *reinterpret_cast<const uint4 *>(y + t * C + c) : uint4{};
#pragma unroll
        for (int i = 0; i < N; ++i)
          xv[u][i] = ok ? *reinterpret_cast<const uint4 *>(x + (t * N + i) * C + c) : uint4{};
      }
      float ssum[BATCH] = {};
#pragma unroll
      for (int u = 0; u < BATCH; ++u) {
        int it = tid + (rb + u) * TH, tl = it / NV, cl = (it % NV) * 8, c = cbase + cl;
        long t = t0 + tl;
        bool ok = t < T && c < C;
        const __nv_bfloat16 *yh = reinterpret_cast<const __nv_bfloat16 *>(&yv[u]);
#pragma unroll
        for (int j = 0; j < N; ++j) {
          __align__(16) __nv_bfloat16 ob[8];
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            float o = cs[tl][j] * __bfloat162float(yh[e]);
#pragma unroll
            for (int i = 0; i < N; ++i)
              o = fmaf(cs[tl][N + i * N + j],
                       __bfloat162float(reinterpret_cast<const __nv_bfloat16 *>(&xv[u][i])[e]), o);
            ob[e] = __float2bfloat16_rn(o);
            float r = __bfloat162float(ob[e]);
            ssum[u] = fmaf(r, r, ssum[u]);
          }
          if (ok)
            *reinterpret_cast<uint4 *>(xn + (t * N + j) * C + c) = *reinterpret_cast<uint4 *>(ob);
          *reinterpret_cast<uint4 *>(A + tl * LDA + j * CW + cl) = *reinterpret_cast<uint4 *>(ob);
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (r / BATCH == rb / BATCH) ss[r] += ssum[r % BATCH];
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float v = ss[r];
#pragma unroll
      for (int off = NV / 2; off >= 1; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
      int it = tid + r * TH;
      if (it % NV == 0) ssTok[it / NV] = v;
    }
    __syncthreads();
    float acc[MT][NT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[m][nt][e] = 0.f;
#pragma unroll
    for (int si = 0; si < STEPS / WARPS; ++si) {
      int k0 = (si * WARPS + warp) * 16;
      uint2 b0[NT], b1[NT];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        int row = nt * 8 + g;
        b0[nt] = row < M ? fnP[row * LDP + k0 / 2 + q] : make_uint2(0, 0);
        b1[nt] = row < M ? fnP[row * LDP + k0 / 2 + 4 + q] : make_uint2(0, 0);
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        uint32_t a[4];
        const __nv_bfloat16 *pa = A + (m * 16 + lane % 16) * LDA + k0 + (lane / 16) * 8;
        unsigned sa = static_cast<unsigned>(__cvta_generic_to_shared(pa));
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                     : "r"(sa));
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          mma_bf16(acc[m][nt], a, b0[nt].y, b1[nt].y);
          mma_bf16(acc[m][nt], a, b0[nt].x, b1[nt].x);
        }
      }
    }
    __syncthreads();  // the tile is read: reuse it for the warps' partial products
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          int row = m * 16 + g + (e / 2) * 8, col = nt * 8 + 2 * q + e % 2;
          if (col < M) red[(warp * TT + row) * M + col] = acc[m][nt][e];
        }
    __syncthreads();
    float *wsS = ws + (size_t)sl * T * (M + 1);
    for (int i = tid; i < TT * M; i += TH) {
      int tl = i / M;
      if (t0 + tl >= T) continue;
      float v = 0.f;
#pragma unroll
      for (int w = 0; w < WARPS; ++w) v += red[w * TT * M + i];
      wsS[(size_t)t0 * M + i] = v;
    }
    for (int tl = tid; tl < TT; tl += TH)
      if (t0 + tl < T) wsS[(size_t)T * M + t0 + tl] = ssTok[tl];
    __syncthreads();
  }
  (void)S;
}

__global__ void __launch_bounds__(256) post_sk_finish(int T, int C, int S, const float *__restrict__ ws, float eps,
                                                      float *__restrict__ mix) {
  int i = blockIdx.x * 256 + threadIdx.x;
  if (i >= T * M) return;
  int t = i / M;
  float d = 0.f, q = 0.f;
  for (int s = 0; s < S; ++s) {
    const float *w = ws + (size_t)s * T * (M + 1);
    d += w[i];
    q += w[(size_t)T * M + t];
  }
  mix[i] = d * rsqrtf(q / (N * C) + eps);
}

template <int TT, int CW, int WARPS, int BATCH, int MINB> static void runSK(Bufs &b, double copyGBps, int perSMwanted) {
  auto k = post_sk<TT, CW, WARPS, BATCH, MINB>;
  constexpr int LDA = N * CW + 8, LDP = N * CW / 2 + 4;
  int smem = M * LDP * 8 + std::max(TT * LDA * 2, WARPS * TT * M * 4);
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  cudaFuncAttributes fa;
  CK(cudaFuncGetAttributes(&fa, k));
  int perSM = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSM, k, WARPS * 32, smem));
  int S = (b.C + CW - 1) / CW;
  int slots = 132 * std::min(perSM, perSMwanted);
  int G = std::max(1, std::min((b.T + TT - 1) / TT, slots / S));
  float *ws;
  CK(cudaMalloc(&ws, (size_t)S * b.T * (M + 1) * 4));
  auto launch = [&] {
    k<<<dim3(S, G), WARPS * 32, smem>>>(b.T, b.C, b.y, b.x, b.post, b.comb, b.fn, b.xn, ws);
    post_sk_finish<<<(b.T * M + 255) / 256, 256>>>(b.T, b.C, S, ws, 1e-6f, b.mix);
  };
  CK(cudaMemset(b.xn, 0xff, (size_t)b.T * N * b.C * 2));
  CK(cudaMemset(b.mix, 0xff, (size_t)b.T * M * 4));
  launch();
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  double exn, emix;
  check(b, true, exn, emix);
  double ms = time_ms(launch);
  auto fin = [&] { post_sk_finish<<<(b.T * M + 255) / 256, 256>>>(b.T, b.C, S, ws, 1e-6f, b.mix); };
  double msf = time_ms(fin);
  double bytes = (double)b.T * b.C * (2 * N + 1) * 2;
  printf("SK TT=%2d run %4dB warps=%d batch=%d minb=%d S=%d G=%d C=%5d regs=%3d smem=%6d blocks/SM=%d  %.4f ms (finish %.4f)  %5.1f%% of copy  err xn %.2e mix %.2e\n",
         TT, 2 * CW, WARPS, BATCH, MINB, S, G, b.C, fa.numRegs, smem, perSM, ms, msf,
         100 * bytes / (ms * 1e-3) / 1e9 / copyGBps, exn, emix);
  CK(cudaFree(ws));
}

// Design P: Y with a register ring over the flat sequence of the block's (chunk, item) pairs: while
// item i is computed, the loads of item i + D are in flight, also across the barrier and the
// tensor-core phase (the next chunk's first items). FNM: 0 = fn fragments from L2 in the mma phase,
// 1 = fn slice staged in shared memory by cp.async at the chunk's start.
template <int TT, int CC, int WARPS, int D, int MINB, int UNR, int FNM>
__global__ void __launch_bounds__(WARPS * 32, MINB) post_p(int T, int C, const __nv_bfloat16 *__restrict__ y,
                                                     const __nv_bfloat16 *__restrict__ x,
                                                     const float *__restrict__ post,
                                                     const float *__restrict__ comb,
                                                     const float *__restrict__ fn, float eps,
                                                     __nv_bfloat16 *__restrict__ xn,
                                                     float *__restrict__ mix) {
  constexpr int TH = WARPS * 32, KCH = N * CC, LDA = KCH + 8, NV = CC / 8, LDF = KCH + 8;
  constexpr int ITEMS = TT * NV, R = ITEMS / TH, MT = TT / 16;
  static_assert(ITEMS % TH == 0 && R % D == 0, "geometry");
  extern __shared__ __align__(16) unsigned char dyn[];
  __nv_bfloat16 *A = reinterpret_cast<__nv_bfloat16 *>(dyn);
  float *fnS = reinterpret_cast<float *>(dyn + TT * LDA * 2);
  __shared__ float cs[TT][20];
  __shared__ float ssTok[TT];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int t0 = blockIdx.x * TT, K = N * C;
  for (int i = tid; i < TT * 20; i += TH) {
    int r = i / 20, e = i % 20, t = t0 + r;
    cs[r][e] = t < T ? (e < N ? post[t * N + e] : comb[t * N * N + e - N]) : 0.f;
  }
  // Item r of any chunk: token row tl(r) = (tid + r*TH) / NV, column (tid % NV)*8 (TH % NV == 0).
  const int colT = (tid % NV) * 8;
  auto load = [&](int c0, int r, uint4 (&v)[N + 1]) {
    int tl = (tid + r * TH) / NV, c = c0 + colT;
    long t = t0 + tl;
    bool ok = t < T && c < C;
    v[0] = ok ? *reinterpret_cast<const uint4 *>(y + t * C + c) : uint4{};
#pragma unroll
    for (int i = 0; i < N; ++i)
      v[1 + i] = ok ? *reinterpret_cast<const uint4 *>(x + (t * N + i) * C + c) : uint4{};
  };
  auto stageFn = [&](int c0) {
    constexpr int PER = CC / 4;
    for (int i = tid; i < M * N * PER; i += TH) {
      int row = i / (N * PER), j = (i / PER) % N, v = i % PER, col = c0 + v * 4;
      if (col < C) cp_async16(fnS + row * LDF + j * CC + v * 4, fn + (size_t)row * K + (size_t)j * C + col);
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };
  uint4 ring[D][N + 1];
#pragma unroll
  for (int d = 0; d < D; ++d) load(0, d, ring[d]);
  __syncthreads();
  float acc[MT][NT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[m][nt][e] = 0.f;
  float ss[R] = {};
  for (int c0 = 0; c0 < C; c0 += CC) {
    if (FNM == 1) stageFn(c0);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      uint4 v[N + 1];
#pragma unroll
      for (int e = 0; e < N + 1; ++e) v[e] = ring[r % D][e];
      // Refill this ring slot with item r + D (of this chunk or the next).
      if (r + D < R) load(c0, r + D, ring[r % D]);
      else if (c0 + CC < C) load(c0 + CC, r + D - R, ring[r % D]);
      int tl = (tid + r * TH) / NV, c = c0 + colT;
      long t = t0 + tl;
      bool ok = t < T && c < C;
      const __nv_bfloat16 *yh = reinterpret_cast<const __nv_bfloat16 *>(&v[0]);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        __align__(16) __nv_bfloat16 ob[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          float o = cs[tl][j] * __bfloat162float(yh[e]);
#pragma unroll
          for (int i = 0; i < N; ++i)
            o = fmaf(cs[tl][N + i * N + j],
                     __bfloat162float(reinterpret_cast<const __nv_bfloat16 *>(&v[1 + i])[e]), o);
          ob[e] = __float2bfloat16_rn(o);
          float rr = __bfloat162float(ob[e]);
          ss[r] = fmaf(rr, rr, ss[r]);
        }
        if (ok)
          *reinterpret_cast<uint4 *>(xn + (t * N + j) * C + c) = *reinterpret_cast<uint4 *>(ob);
        *reinterpret_cast<uint4 *>(A + tl * LDA + j * CC + colT) = *reinterpret_cast<uint4 *>(ob);
      }
    }
    if (FNM == 1) asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();
#pragma unroll UNR
    for (int s0 = 0; s0 < KCH / 16; s0 += WARPS) {
      int st = s0 + warp;
      int k0 = st * 16, i = k0 / CC, kg = i * C + c0 + k0 % CC;
      uint32_t bh[NT][2], bl[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        int row = nt * 8 + g;
        float2 f0, f1;
        if (FNM == 1) {
          const float *fs = fnS + (row < M ? row : 0) * LDF + k0 + 2 * q;
          f0 = *reinterpret_cast<const float2 *>(fs);
          f1 = *reinterpret_cast<const float2 *>(fs + 8);
        } else {
          const float *src = fn + (size_t)(row < M ? row : 0) * K + kg + 2 * q;
          f0 = *reinterpret_cast<const float2 *>(src);
          f1 = *reinterpret_cast<const float2 *>(src + 8);
        }
        if (row >= M) f0 = f1 = make_float2(0, 0);
        split2(f0, bh[nt][0], bl[nt][0]);
        split2(f1, bh[nt][1], bl[nt][1]);
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        uint32_t a[4];
        const __nv_bfloat16 *pa = A + (m * 16 + lane % 16) * LDA + k0 + (lane / 16) * 8;
        unsigned sa = static_cast<unsigned>(__cvta_generic_to_shared(pa));
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                     : "r"(sa));
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          mma_bf16(acc[m][nt], a, bl[nt][0], bl[nt][1]);
          mma_bf16(acc[m][nt], a, bh[nt][0], bh[nt][1]);
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float v = ss[r];
#pragma unroll
    for (int off = NV / 2; off >= 1; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    int it = tid + r * TH;
    if (it % NV == 0) ssTok[it / NV] = v;
  }
  float *red = reinterpret_cast<float *>(dyn);
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int row = m * 16 + g + (e / 2) * 8, col = nt * 8 + 2 * q + e % 2;
        if (col < M) red[(warp * TT + row) * M + col] = acc[m][nt][e];
      }
  __syncthreads();
  for (int i = tid; i < TT * M; i += TH) {
    int tl = i / M;
    if (t0 + tl >= T) continue;
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) v += red[w * TT * M + i];
    mix[(size_t)t0 * M + i] = v * rsqrtf(ssTok[tl] / K + eps);
  }
}

template <int TT, int CC, int WARPS, int D, int MINB, int UNR, int FNM> static void runP(Bufs &b, double copyGBps) {
  auto k = post_p<TT, CC, WARPS, D, MINB, UNR, FNM>;
  constexpr int LDA = N * CC + 8;
  int smem = std::max(TT * LDA * 2 + (FNM ? M * (N * CC + 8) * 4 : 0), WARPS * TT * M * 4);
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  cudaFuncAttributes fa;
  CK(cudaFuncGetAttributes(&fa, k));
  int perSM = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSM, k, WARPS * 32, smem));
  int grid = (b.T + TT - 1) / TT;
  auto launch = [&] {
    k<<<grid, WARPS * 32, smem>>>(b.T, b.C, b.y, b.x, b.post, b.comb, b.fn, 1e-6f, b.xn, b.mix);
  };
  CK(cudaMemset(b.xn, 0xff, (size_t)b.T * N * b.C * 2));
  CK(cudaMemset(b.mix, 0xff, (size_t)b.T * M * 4));
  launch();
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  double exn, emix;
  check(b, true, exn, emix);
  double ms = time_ms(launch);
  double bytes = (double)b.T * b.C * (2 * N + 1) * 2;
  printf("P TT=%2d run %4dB warps=%d D=%d minb=%d unr=%d fnm=%d C=%5d regs=%3d smem=%6d blocks/SM=%d  %.4f ms  %5.1f%% of copy  err xn %.2e mix %.2e\n",
         TT, 2 * CC, WARPS, D, MINB, UNR, FNM, b.C, fa.numRegs, smem, perSM, ms,
         100 * bytes / (ms * 1e-3) / 1e9 / copyGBps, exn, emix);
}

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("device %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  size_t cb = 1ull << 31;
  void *s, *d;
  CK(cudaMalloc(&s, cb));
  CK(cudaMalloc(&d, cb));
  CK(cudaMemset(s, 1, cb));
  double cms = time_ms([&] { CK(cudaMemcpyAsync(d, s, cb, cudaMemcpyDeviceToDevice)); }, 20);
  double copyGBps = 2.0 * cb / (cms * 1e-3) / 1e9;
  printf("copy: %.1f GB/s (read + write)\n", copyGBps);
  CK(cudaFree(s));
  CK(cudaFree(d));

  for (int C : {4096, 7168}) {
    Bufs b = make(16384, C, 1234 + C);
    {
      int grid = 132 * 8;
      auto launch = [&] {
        post_res_stream<<<grid, 256>>>(b.T, b.C, b.y, b.x, b.post, b.comb, b.xn);
      };
      launch();
      CK(cudaDeviceSynchronize());
      double ms = time_ms(launch);
      double bytes = (double)b.T * b.C * (2 * N + 1) * 2;
      printf("%-28s C=%5d                     %.4f ms  %5.1f%% of copy\n", "post_res streaming", C, ms,
             100 * bytes / (ms * 1e-3) / 1e9 / copyGBps);
    }
    runTiles<32, 32>(b, copyGBps);
    runTiles<16, 256>(b, copyGBps);
    runY<32, 128, 4, 2, 4, 1, 0>(b, copyGBps);
    runY<32, 128, 8, 2, 2, 4, 4>(b, copyGBps);
    runY<32, 128, 4, 2, 4, 4, 0>(b, copyGBps);
    runY<32, 128, 4, 2, 4, 8, 0>(b, copyGBps);
    runY<32, 128, 4, 2, 3, 8, 0>(b, copyGBps);
    runYG<32, 128, 4, 2, 1, 8, 0, 4>(b, copyGBps);
    runYG<32, 128, 4, 2, 1, 8, 0, 2>(b, copyGBps);
    runYG<32, 128, 4, 2, 2, 8, 0, 2>(b, copyGBps);
    runYG<32, 128, 4, 2, 1, 8, 0, 4, 8>(b, copyGBps);
    runY<32, 128, 8, 2, 2, 4, 0>(b, copyGBps);
    runYG<32, 128, 8, 2, 1, 4, 0, 2>(b, copyGBps);
  }
  return 0;
}
